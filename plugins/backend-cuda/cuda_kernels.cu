// The CUDA backend's kernels: plain, readable and checked against the CPU
// backend (tests/gpu/test_backend_cuda.cpp). Conventions:
// - elementwise kernels use grid-stride loops over int64 indices;
// - row kernels use one block of kRowThreads per row; reductions are fixed
//   trees (warp shuffles, then one warp over the warps' results), so a result
//   depends only on the shape, never on timing (deterministic);
// - column reductions (bias and norm weight gradients) sum fixed chunks of
//   rows per column in double, then the chunks in order; the embedding
//   gradient gives each column to one thread that walks the rows in order
//   (repeated ids never race): no atomics anywhere;
// - sums run in double where the CPU backend's do;
// - the attention kernels give each (batch, head, row) to one warp with an
//   online softmax over the keys: no [T,T] buffer exists.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda_kernels.hpp"

namespace weft::cuda {

namespace {

constexpr int kThreads = 256;     // elementwise block size
constexpr int kRowThreads = 256;  // one block per row
constexpr int64_t kMaxBlocks = 1 << 16;

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? b : kMaxBlocks);
}

#define WEFT_GRID_STRIDE(i, n)                                                           \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------- 16-bit floats
// The bit-exact device twins of weft/half.hpp.

__device__ __forceinline__ float bf16_to_float(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

__device__ __forceinline__ uint16_t float_to_bf16(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x03ffu;
  if (exp == 0) {
    const float mag = ldexpf(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  }
  if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
  return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ uint16_t float_to_f16(float x) {
  const uint32_t u = __float_as_uint(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u)
    return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x0200u | ((a >> 13) & 0x03ffu) : 0u));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    uint32_t h = (a >> 13) - (112u << 10);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  if (a <= 0x33000000u) return static_cast<uint16_t>(sign);
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// Element i of a weight of dtype wt, widened to fp32 (exact).
__device__ __forceinline__ float load_w(const void* p, int wt, int64_t i) {
  if (wt == kF32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return wt == kBF16 ? bf16_to_float(h) : f16_to_float(h);
}

// ---------------------------------------------------------------- Philox (weft/rng.hpp, bit for bit)

__device__ __forceinline__ uint32_t philox_first_word(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = 0xD2511F53ull * c0;
    const uint64_t p1 = 0xCD9E8D57ull * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// weft::dropout_keep: kept with probability 1 - p.
__device__ __forceinline__ bool dropout_keep(uint64_t key, uint64_t sample, uint64_t index, float p) {
  const uint32_t r = philox_first_word(key, sample, index);
  return (static_cast<float>(r >> 8) + 0.5f) * (1.0f / 16777216.0f) >= p;
}

// ---------------------------------------------------------------- reductions

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32), returned to every thread.
// The leading barrier keeps a previous call's readers ahead of this call's writers.
__device__ double block_sum(double v) {
  __shared__ double sh[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    double x = lane < nw ? sh[lane] : 0.0;
    x = warp_sum(x);
    if (lane == 0) sh[0] = x;
  }
  __syncthreads();
  return sh[0];
}

__device__ float block_max(float v) {
  __shared__ float sh[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = lane < nw ? sh[lane] : -INFINITY;
    x = warp_max(x);
    if (lane == 0) sh[0] = x;
  }
  __syncthreads();
  return sh[0];
}

// ---------------------------------------------------------------- memory, casts

__global__ void fill_kernel(float* x, float value, int64_t n) {
  WEFT_GRID_STRIDE(i, n) x[i] = value;
}
__global__ void fill_u32_kernel(uint32_t* x, uint32_t bits, int64_t n) {
  WEFT_GRID_STRIDE(i, n) x[i] = bits;
}
// over batch * m * n elements of C
__global__ void gemm_scale_c_kernel(float* c, float beta, int64_t m, int64_t n, int64_t ldc, int64_t batch,
                                    int64_t stride_c) {
  WEFT_GRID_STRIDE(e, batch * m * n) {
    const int64_t bi = e / (m * n), i = (e / n) % m, j = e % n;
    float* p = c + bi * stride_c + i * ldc + j;
    *p = beta == 0.f ? 0.f : beta * *p;
  }
}
__global__ void widen_kernel(float* dst, const void* src, int wt, int64_t n) {
  WEFT_GRID_STRIDE(i, n) dst[i] = load_w(src, wt, i);
}
__global__ void cast_from_f32_kernel(uint16_t* dst, const float* src, int wt, int64_t n) {
  WEFT_GRID_STRIDE(i, n) dst[i] = wt == kBF16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
}

// ---------------------------------------------------------------- bias, LayerNorm, GeLU

__global__ void add_bias_kernel(float* out, const void* bias, int wt, int64_t n, int64_t o) {
  WEFT_GRID_STRIDE(e, n * o) out[e] += load_w(bias, wt, e % o);
}

// Column sums, pass 1: work[chunk, j] = sum over the chunk's rows of dout[r, j], in double.
// Grid: (column blocks, chunks).
__global__ void bias_grad_partial_kernel(double* work, const float* dout, int64_t n, int64_t o, int64_t rows) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (j >= o) return;
  const int64_t r0 = chunk * rows, r1 = r0 + rows < n ? r0 + rows : n;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) acc += dout[r * o + j];
  work[chunk * o + j] = acc;
}
// Pass 2: out0[j] += sum over the chunks of work[0] in order; with out1 also
// out1[j] += the same over work[1] (work is [1 or 2, chunks, O]).
__global__ void col_finish_kernel(float* out0, float* out1, const double* work, int64_t chunks, int64_t o) {
  WEFT_GRID_STRIDE(j, o) {
    double s0 = 0.0, s1 = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      s0 += work[c * o + j];
      if (out1) s1 += work[(chunks + c) * o + j];
    }
    out0[j] += static_cast<float>(s0);
    if (out1) out1[j] += static_cast<float>(s1);
  }
}

dim3 col_grid(int64_t o, int64_t chunks) {
  return dim3(static_cast<unsigned>((o + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
}

// One block per row [C]: mean and variance in double (two passes, as the CPU backend).
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* x, const void* w,
                                         int wt_w, const void* b, int wt_b, int64_t c, float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * c;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s += xr[j];
  const double mu = block_sum(s) / static_cast<double>(c);
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const double d = xr[j] - mu;
    ss += d * d;
  }
  const double var = block_sum(ss) / static_cast<double>(c);
  const float m = static_cast<float>(mu);
  const float rs = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
  float* orow = out + r * c;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
    orow[j] = (xr[j] - m) * rs * load_w(w, wt_w, j) + load_w(b, wt_b, j);
  if (threadIdx.x == 0) {
    mean[r] = m;
    rstd[r] = rs;
  }
}

// dx row r += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w.
__global__ void layernorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const void* w, int wt_w,
                                             const float* mean, const float* rstd, int64_t c) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * c;
  const float* dr = dout + r * c;
  const float m = mean[r], rs = rstd[r];
  double sg = 0.0, sgx = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float xh = (xr[j] - m) * rs;
    const float g = dr[j] * load_w(w, wt_w, j);
    sg += g;
    sgx += static_cast<double>(g) * xh;
  }
  const float mean_g = static_cast<float>(block_sum(sg) / static_cast<double>(c));
  const float mean_gx = static_cast<float>(block_sum(sgx) / static_cast<double>(c));
  float* dxr = dx + r * c;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float xh = (xr[j] - m) * rs;
    const float g = dr[j] * load_w(w, wt_w, j);
    dxr[j] += rs * (g - mean_g - xh * mean_gx);
  }
}

// LayerNorm column sums, pass 1: work[0][chunk, j] = sum dout * xhat, work[1][chunk, j] = sum dout, in double.
__global__ void layernorm_dwdb_partial_kernel(double* work, const float* dout, const float* x, const float* mean,
                                              const float* rstd, int64_t n, int64_t c, int64_t rows, int64_t chunks) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (j >= c) return;
  const int64_t r0 = chunk * rows, r1 = r0 + rows < n ? r0 + rows : n;
  double aw = 0.0, ab = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    const float xhat = (x[r * c + j] - mean[r]) * rstd[r];
    const float d = dout[r * c + j];
    aw += static_cast<double>(d) * xhat;
    ab += d;
  }
  work[chunk * c + j] = aw;
  work[(chunks + chunk) * c + j] = ab;
}

// GeLU (tanh form) through the logistic function, as the CPU backend:
// s = 1 / (1 + e^{-2u}), u = a (x + b x^3); gelu = x s; gelu' = s + 2 x s (1 - s) a (1 + 3 b x^2).
constexpr float kGeluA = 0.7978845608028654f;
constexpr float kGeluB = 0.044715f;
__device__ __forceinline__ float gelu_s(float v) {
  return 1.f / (1.f + expf(-2.f * (kGeluA * (v + kGeluB * v * v * v))));
}
// x is f32, bf16 or f16 (wt): 16-bit modes keep GeLU's saved input 16-bit.
__global__ void gelu_forward_kernel(float* out, const void* x, int wt, int64_t n) {
  WEFT_GRID_STRIDE(i, n) {
    const float v = load_w(x, wt, i);
    out[i] = v * gelu_s(v);
  }
}
__global__ void gelu_backward_kernel(float* dx, const void* x, int wt, const float* dout, int64_t n) {
  WEFT_GRID_STRIDE(i, n) {
    const float v = load_w(x, wt, i), s = gelu_s(v);
    const float du = kGeluA * (1.f + 3.f * kGeluB * v * v);
    dx[i] = (s + 2.f * v * s * (1.f - s) * du) * dout[i];
  }
}
// Exact GeLU in double, as the CPU backend.
__global__ void gelu_erf_forward_kernel(float* out, const void* x, int wt, int64_t n) {
  WEFT_GRID_STRIDE(i, n) {
    const double v = load_w(x, wt, i);
    out[i] = static_cast<float>(0.5 * v * (1.0 + erf(v * 0.70710678118654752440)));
  }
}
__global__ void gelu_erf_backward_kernel(float* dx, const void* x, int wt, const float* dout, int64_t n) {
  WEFT_GRID_STRIDE(i, n) {
    const double v = load_w(x, wt, i);
    const double cdf = 0.5 * (1.0 + erf(v * 0.70710678118654752440));
    const double pdf = 0.39894228040143267794 * exp(-0.5 * v * v);
    dx[i] = static_cast<float>((cdf + v * pdf) * dout[i]);
  }
}

// ---------------------------------------------------------------- attention
//
// One warp per (batch, head, row); lane l holds elements d = l + 32 r (r < kPer)
// of the row's head vectors in registers. Rows are numbered like lse: row =
// (b * H + h) * T + i. A block holds kAttnWarps rows.

constexpr int kAttnWarps = 4;
constexpr int kPer = static_cast<int>(kAttnMaxHeadSize / 32);

struct AttnRow {
  int64_t bi, hi, i;
};
__device__ __forceinline__ AttnRow attn_row(const AttnParams& a, int64_t row) {
  return AttnRow{row / (a.h * a.t), (row / a.t) % a.h, row % a.t};
}
// Head vectors of position ti: q, k (+C), v (+2C) in qkv[B,T,3C].
__device__ __forceinline__ const float* attn_q(const AttnParams& a, const float* qkv, int64_t bi, int64_t ti,
                                               int64_t hi) {
  return qkv + (bi * a.t + ti) * 3 * a.c + hi * a.hs;
}
__device__ __forceinline__ int64_t attn_first_key(const AttnParams& a, int64_t bi, int64_t i) {
  return a.doc_start ? static_cast<int64_t>(a.doc_start[bi * a.t + i]) : 0;
}
// keep / (1 - p) for probability (bi, hi, i, j); 1 without dropout.
__device__ __forceinline__ float attn_keep(const AttnParams& a, int64_t bi, int64_t hi, int64_t i, int64_t j) {
  if (!(a.dropout > 0.f)) return 1.f;
  const uint64_t index = static_cast<uint64_t>(((a.first_head + hi) * a.t + i) * a.t + j);
  return dropout_keep(a.dropout_key, static_cast<uint64_t>(a.first_sample + bi), index, a.dropout)
             ? 1.f / (1.f - a.dropout)
             : 0.f;
}
__device__ __forceinline__ void load_head(float (&dst)[kPer], const float* src, int64_t hs, int lane) {
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int64_t d = lane + 32 * r;
    dst[r] = d < hs ? src[d] : 0.f;
  }
}
// dot(reg, src) over the head, summed over the warp (every lane gets it).
__device__ __forceinline__ float head_dot(const float (&reg)[kPer], const float* src, int64_t hs, int lane) {
  float s = 0.f;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < hs) s += reg[r] * src[d];
  }
  return warp_sum(s);
}

// out row = softmax(q K^T * scale, masked) V with the online softmax; lse row = m + log(l).
__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, AttnParams a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttnWarps + (threadIdx.x >> 5);
  if (row >= a.b * a.h * a.t) return;  // the whole warp leaves together
  const AttnRow rw = attn_row(a, row);
  float q[kPer], acc[kPer];
  load_head(q, attn_q(a, qkv, rw.bi, rw.i, rw.hi), a.hs, lane);
#pragma unroll
  for (int r = 0; r < kPer; ++r) acc[r] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int64_t j = attn_first_key(a, rw.bi, rw.i); j <= rw.i; ++j) {
    const float* kj = attn_q(a, qkv, rw.bi, j, rw.hi) + a.c;
    const float* vj = kj + a.c;
    const float s = head_dot(q, kj, a.hs, lane) * a.scale;
    const float mn = fmaxf(m, s);
    const float corr = expf(m - mn);  // 0 for the first key (m = -inf)
    const float p = expf(s - mn);
    l = l * corr + p;  // the softmax normalises before dropout
    m = mn;
    const float pk = p * attn_keep(a, rw.bi, rw.hi, rw.i, j);
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < a.hs) acc[r] = acc[r] * corr + pk * vj[d];
    }
  }
  float* orow = out + (rw.bi * a.t + rw.i) * a.c + rw.hi * a.hs;
  const float inv = 1.f / l;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < a.hs) orow[d] = acc[r] * inv;
  }
  if (lane == 0) lse[row] = static_cast<float>(static_cast<double>(m) + log(static_cast<double>(l)));
}

// dsum[row] = dot(dout_i, out_i) over the head, in double.
__global__ void attention_dsum_kernel(float* dsum, const float* dout, const float* out, AttnParams a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttnWarps + (threadIdx.x >> 5);
  if (row >= a.b * a.h * a.t) return;
  const AttnRow rw = attn_row(a, row);
  const int64_t at = (rw.bi * a.t + rw.i) * a.c + rw.hi * a.hs;
  double s = 0.0;
  for (int64_t d = lane; d < a.hs; d += 32) s += static_cast<double>(dout[at + d]) * out[at + d];
  s = warp_sum(s);
  if (lane == 0) dsum[row] = static_cast<float>(s);
}

// g_ij = p_ij (keep dp_ij - dsum_i) scale, p from the saved lse, dp = dout_i . v_j.
__device__ __forceinline__ float attn_grad_score(float p, float keep, float dp, float di, float scale) {
  return p * (keep * dp - di) * scale;
}

// dQ row i = sum over its visible keys j of g_ij K_j.
__global__ void attention_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                    const float* dsum, AttnParams a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttnWarps + (threadIdx.x >> 5);
  if (row >= a.b * a.h * a.t) return;
  const AttnRow rw = attn_row(a, row);
  float q[kPer], dor[kPer], dq[kPer];
  load_head(q, attn_q(a, qkv, rw.bi, rw.i, rw.hi), a.hs, lane);
  load_head(dor, dout + (rw.bi * a.t + rw.i) * a.c + rw.hi * a.hs, a.hs, lane);
#pragma unroll
  for (int r = 0; r < kPer; ++r) dq[r] = 0.f;
  const float li = lse[row], di = dsum[row];
  for (int64_t j = attn_first_key(a, rw.bi, rw.i); j <= rw.i; ++j) {
    const float* kj = attn_q(a, qkv, rw.bi, j, rw.hi) + a.c;
    const float* vj = kj + a.c;
    const float p = expf(head_dot(q, kj, a.hs, lane) * a.scale - li);
    const float dp = head_dot(dor, vj, a.hs, lane);
    const float g = attn_grad_score(p, attn_keep(a, rw.bi, rw.hi, rw.i, j), dp, di, a.scale);
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < a.hs) dq[r] += g * kj[d];
    }
  }
  float* dst = dqkv + (rw.bi * a.t + rw.i) * 3 * a.c + rw.hi * a.hs;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < a.hs) dst[d] = dq[r];
  }
}

// dK row j = sum over the queries i >= j that see it of g_ij Q_i; dV row j = sum of keep p_ij dO_i.
// Here `row` numbers the key position j.
__global__ void attention_dkv_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                                     const float* dsum, AttnParams a) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttnWarps + (threadIdx.x >> 5);
  if (row >= a.b * a.h * a.t) return;
  const AttnRow rw = attn_row(a, row);
  const int64_t j = rw.i;
  float k[kPer], v[kPer], dk[kPer], dv[kPer];
  const float* kj = attn_q(a, qkv, rw.bi, j, rw.hi) + a.c;
  load_head(k, kj, a.hs, lane);
  load_head(v, kj + a.c, a.hs, lane);
#pragma unroll
  for (int r = 0; r < kPer; ++r) dk[r] = dv[r] = 0.f;
  const int64_t bh = rw.bi * a.h + rw.hi;
  for (int64_t i = j; i < a.t; ++i) {
    if (attn_first_key(a, rw.bi, i) > j) continue;  // key j is in an earlier document than query i
    const float* qi = attn_q(a, qkv, rw.bi, i, rw.hi);
    const float* doi = dout + (rw.bi * a.t + i) * a.c + rw.hi * a.hs;
    const float p = expf(head_dot(k, qi, a.hs, lane) * a.scale - lse[bh * a.t + i]);
    const float dp = head_dot(v, doi, a.hs, lane);
    const float keep = attn_keep(a, rw.bi, rw.hi, i, j);
    const float g = attn_grad_score(p, keep, dp, dsum[bh * a.t + i], a.scale);
    const float pk = keep * p;
#pragma unroll
    for (int r = 0; r < kPer; ++r) {
      const int64_t d = lane + 32 * r;
      if (d < a.hs) {
        dk[r] += g * qi[d];
        dv[r] += pk * doi[d];
      }
    }
  }
  float* dst = dqkv + (rw.bi * a.t + j) * 3 * a.c + rw.hi * a.hs;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int64_t d = lane + 32 * r;
    if (d < a.hs) {
      dst[a.c + d] = dk[r];
      dst[2 * a.c + d] = dv[r];
    }
  }
}

__global__ void dropout_kernel(float* x, int64_t b, int64_t t, int64_t c, float p, uint64_t key,
                               int64_t first_sample, int64_t t0) {
  const float keep_scale = 1.f / (1.f - p);
  WEFT_GRID_STRIDE(e, b * t * c) {
    const int64_t r = e / c, ci = e % c, bi = r / t, ti = r % t;
    const uint64_t sample = static_cast<uint64_t>(first_sample + bi);
    const uint64_t index = static_cast<uint64_t>((t0 + ti) * c + ci);
    x[e] = dropout_keep(key, sample, index, p) ? x[e] * keep_scale : 0.f;
  }
}

// ---------------------------------------------------------------- embedding, cross entropy

__global__ void embedding_forward_kernel(float* out, const int32_t* ids, const void* table, int wt, int64_t n,
                                         int64_t c, int64_t first, int64_t rows, int* err) {
  WEFT_GRID_STRIDE(e, n * c) {
    const int64_t r = e / c, j = e % c;
    const int32_t id = ids[r];
    if (id < 0) atomicExch(err, kErrEmbeddingId);
    const int64_t row = static_cast<int64_t>(id) - first;
    out[e] = id >= 0 && row >= 0 && row < rows ? load_w(table, wt, row * c + j) : 0.f;
  }
}

// One thread per column: the rows of dout in order (repeated ids never race; deterministic).
__global__ void embedding_backward_kernel(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                                          int64_t first, int64_t rows, int* err) {
  WEFT_GRID_STRIDE(j, c) {
    for (int64_t r = 0; r < n; ++r) {
      const int32_t id = ids[r];
      if (id < 0) {
        atomicExch(err, kErrEmbeddingId);
        continue;
      }
      const int64_t row = static_cast<int64_t>(id) - first;
      if (row >= 0 && row < rows) dtable[row * c + j] += dout[r * c + j];
    }
  }
}

// One block per row of logits[N,Vp]; dlogits may alias logits (the target's
// logit is read before any write, and each element is read and written by
// the same thread afterwards).
__global__ void cross_entropy_kernel(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                     int64_t v, int64_t vp, float scale, int* err) {
  const int64_t r = blockIdx.x;
  const float* lr = logits + r * vp;
  float* dr = dlogits ? dlogits + r * vp : nullptr;
  const int32_t target = targets[r];
  if (target < 0 || target >= v) {  // ignored (or bad) target: loss 0, gradient 0
    if (target >= v && threadIdx.x == 0) atomicExch(err, kErrTarget);
    if (threadIdx.x == 0) losses[r] = target < 0 ? 0.f : NAN;
    if (dr)
      for (int64_t j = threadIdx.x; j < vp; j += blockDim.x) dr[j] = 0.f;
    return;
  }
  const float x_target = lr[target];
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) mx = fmaxf(mx, lr[j]);
  mx = block_max(mx);
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) s += exp(static_cast<double>(lr[j] - mx));
  s = block_sum(s);  // ends with a barrier: every thread has read x_target
  const double log_z = static_cast<double>(mx) + log(s);
  if (threadIdx.x == 0) losses[r] = static_cast<float>(log_z - static_cast<double>(x_target));
  if (!dr) return;
  const float lz = static_cast<float>(log_z);
  for (int64_t j = threadIdx.x; j < vp; j += blockDim.x) {
    float g = 0.f;
    if (j < v) {
      g = scale * expf(lr[j] - lz);
      if (j == target) g -= scale;
    }
    dr[j] = g;
  }
}

__device__ __forceinline__ int64_t real_columns(int64_t vs, int64_t first, int64_t v) {
  const int64_t r = v - first;
  return r < 0 ? 0 : (r > vs ? vs : r);
}

__global__ void xent_shard_max_kernel(float* row_max, float* target_logit, const float* logits,
                                      const int32_t* targets, int64_t vs, int64_t first, int64_t v) {
  const int64_t r = blockIdx.x, real = real_columns(vs, first, v);
  const float* lr = logits + r * vs;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < real; j += blockDim.x) mx = fmaxf(mx, lr[j]);
  mx = block_max(mx);
  if (threadIdx.x == 0) {
    row_max[r] = mx;
    const int64_t t = static_cast<int64_t>(targets[r]) - first;
    target_logit[r] = targets[r] >= 0 && t >= 0 && t < real ? lr[t] : 0.f;
  }
}

__global__ void xent_shard_sum_exp_kernel(float* sum_exp, const float* logits, const float* row_max, int64_t vs,
                                          int64_t first, int64_t v) {
  const int64_t r = blockIdx.x, real = real_columns(vs, first, v);
  const float* lr = logits + r * vs;
  const float mx = row_max[r];
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < real; j += blockDim.x) s += exp(static_cast<double>(lr[j] - mx));
  s = block_sum(s);
  if (threadIdx.x == 0) sum_exp[r] = static_cast<float>(s);
}

__global__ void xent_shard_finish_kernel(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                         const float* row_max, const float* sum_exp, const float* target_logit,
                                         int64_t vs, int64_t first, int64_t v, float scale, int* err) {
  const int64_t r = blockIdx.x, real = real_columns(vs, first, v);
  const float* lr = logits + r * vs;
  float* dr = dlogits ? dlogits + r * vs : nullptr;
  const int32_t target = targets[r];
  if (target < 0 || target >= v) {
    if (target >= v && threadIdx.x == 0) atomicExch(err, kErrTarget);
    if (threadIdx.x == 0) losses[r] = target < 0 ? 0.f : NAN;
    if (dr)
      for (int64_t j = threadIdx.x; j < vs; j += blockDim.x) dr[j] = 0.f;
    return;
  }
  const double log_z = static_cast<double>(row_max[r]) + log(static_cast<double>(sum_exp[r]));
  if (threadIdx.x == 0) losses[r] = static_cast<float>(log_z - static_cast<double>(target_logit[r]));
  if (!dr) return;
  const float lz = static_cast<float>(log_z);
  const int64_t t = static_cast<int64_t>(target) - first;
  for (int64_t j = threadIdx.x; j < vs; j += blockDim.x) {
    float g = 0.f;
    if (j < real) {
      g = scale * expf(lr[j] - lz);
      if (j == t) g -= scale;
    }
    dr[j] = g;
  }
}

// ---------------------------------------------------------------- elementwise, reductions, optimizer

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  WEFT_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
__global__ void accumulate_kernel(float* acc, const float* x, int64_t n) {
  WEFT_GRID_STRIDE(i, n) acc[i] += x[i];
}
__global__ void scale_kernel(float* x, float v, int64_t n) {
  WEFT_GRID_STRIDE(i, n) x[i] *= v;
}

// Stage 1: partial[block] = the block's grid-stride share, in double.
__global__ void sum_partial_kernel(double* partial, const float* x, int64_t n, bool square) {
  double s = 0.0;
  WEFT_GRID_STRIDE(i, n) {
    const double v = x[i];
    s += square ? v * v : v;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// Stage 2: one block of kSumPartials threads sums the partials.
__global__ void sum_final_kernel(double* result, const double* partial, int count) {
  const double s = block_sum(threadIdx.x < count ? partial[threadIdx.x] : 0.0);
  if (threadIdx.x == 0) *result = s;
}

// The CPU backend's scalar AdamW operation by operation, rounded the same way
// (the _rn intrinsics keep nvcc from fusing multiply-adds), so both give the same bits.
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWParams k) {
  WEFT_GRID_STRIDE(i, n) {
    const float gi = __fmul_rn(k.grad_scale, g[i]);
    const float mi = __fadd_rn(__fmul_rn(k.beta1, m[i]), __fmul_rn(k.one_minus_beta1, gi));
    const float vi = __fadd_rn(__fmul_rn(k.beta2, v[i]), __fmul_rn(__fmul_rn(k.one_minus_beta2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    const float mhat = __fdiv_rn(mi, k.bc1);
    const float vhat = __fdiv_rn(vi, k.bc2);
    const float pi = p[i];
    const float upd = __fadd_rn(__fdiv_rn(mhat, __fadd_rn(__fsqrt_rn(vhat), k.eps)), __fmul_rn(k.wd, pi));
    p[i] = __fsub_rn(pi, __fmul_rn(k.lr, upd));
  }
}

// ---------------------------------------------------------------- Llama family

__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* x, const void* w, int wt, int64_t c,
                                       float eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * c;
  double ss = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) ss += static_cast<double>(xr[j]) * xr[j];
  ss = block_sum(ss);
  const float rs = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(c) + static_cast<double>(eps)));
  if (threadIdx.x == 0) rstd[r] = rs;
  float* yr = out + r * c;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) yr[j] = xr[j] * rs * load_w(w, wt, j);
}

// dx_k = r w_k dy_k - r^3 x_k / C * sum_j w_j dy_j x_j (overwritten)
__global__ void rmsnorm_backward_dx_kernel(float* dx, const float* dout, const float* x, const void* w, int wt,
                                           const float* rstd, int64_t c) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * c;
  const float* gr = dout + r * c;
  const float rs = rstd[r];
  double dot = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
    dot += static_cast<double>(load_w(w, wt, j)) * gr[j] * xr[j];
  dot = block_sum(dot);
  const float k = static_cast<float>(dot * rs * rs * rs / static_cast<double>(c));
  float* dr = dx + r * c;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) dr[j] = rs * load_w(w, wt, j) * gr[j] - k * xr[j];
}

// RMSNorm column sums, pass 1: work[chunk, j] = sum over the chunk's rows of dout * x * rstd, in double.
__global__ void rmsnorm_dw_partial_kernel(double* work, const float* dout, const float* x, const float* rstd,
                                          int64_t n, int64_t c, int64_t rows) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (j >= c) return;
  const int64_t r0 = chunk * rows, r1 = r0 + rows < n ? r0 + rows : n;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) acc += static_cast<double>(dout[r * c + j]) * x[r * c + j] * rstd[r];
  work[chunk * c + j] = acc;
}

// One thread per rotated pair (b, t, h, i < D/2); angles in double as the CPU backend's tables.
__global__ void rope_kernel(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d, float theta,
                            float sign) {
  const int64_t half = d / 2;
  WEFT_GRID_STRIDE(e, b * t * h * half) {
    const int64_t i = e % half, hi = (e / half) % h, r = e / (half * h), pos = r % t;
    const double inv_freq = pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double ang = static_cast<double>(pos) * inv_freq;
    const float cs = static_cast<float>(cos(ang)), sn = static_cast<float>(sin(ang));
    const int64_t at = r * h * d + hi * d;
    const float x1 = x[at + i], x2 = x[at + i + half], si = sign * sn;
    out[at + i] = x1 * cs - x2 * si;
    out[at + i + half] = x2 * cs + x1 * si;
  }
}

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }
// gate and up f32, bf16 or f16 (gt, ut): 16-bit modes keep them 16-bit.
__global__ void swiglu_forward_kernel(float* out, const void* gate, int gt, const void* up, int ut, int64_t n) {
  WEFT_GRID_STRIDE(i, n) {
    const float g = load_w(gate, gt, i);
    out[i] = g * sigmoid(g) * load_w(up, ut, i);
  }
}
__global__ void swiglu_backward_kernel(float* dgate, float* dup, const void* gate, int gt, const void* up, int ut,
                                       const float* dout, int64_t n) {
  WEFT_GRID_STRIDE(i, n) {
    const float g = load_w(gate, gt, i), s = sigmoid(g);
    dup[i] = dout[i] * g * s;
    dgate[i] = dout[i] * load_w(up, ut, i) * s * (1.f + g * (1.f - s));
  }
}

// qkv[B*T, 3C] from q[B*T, C], k and v [B*T, KV*D]; one thread per qkv element.
__global__ void gqa_pack_kernel(float* qkv, const float* q, const float* k, const float* v, int64_t rows, int64_t h,
                                int64_t kv, int64_t d) {
  const int64_t c = h * d, ckv = kv * d, group = h / kv;
  WEFT_GRID_STRIDE(e, rows * 3 * c) {
    const int64_t r = e / (3 * c), col = e % (3 * c), part = col / c, within = col % c;
    if (part == 0) {
      qkv[e] = q[r * c + within];
    } else {
      const int64_t hi = within / d, j = within % d, g = hi / group;
      qkv[e] = (part == 1 ? k : v)[r * ckv + g * d + j];
    }
  }
}
// dq copied; dk, dv [B*T, KV*D] sum the heads of their group in order.
__global__ void gqa_unpack_q_kernel(float* dq, const float* dqkv, int64_t rows, int64_t c) {
  WEFT_GRID_STRIDE(e, rows * c) dq[e] = dqkv[(e / c) * 3 * c + e % c];
}
__global__ void gqa_unpack_kv_kernel(float* dk, float* dv, const float* dqkv, int64_t rows, int64_t h, int64_t kv,
                                     int64_t d) {
  const int64_t c = h * d, ckv = kv * d, group = h / kv;
  WEFT_GRID_STRIDE(e, rows * ckv) {
    const int64_t r = e / ckv, g = (e % ckv) / d, j = e % d;
    const float* src = dqkv + r * 3 * c;
    float sk = 0.f, sv = 0.f;
    for (int64_t hi = g * group; hi < (g + 1) * group; ++hi) {
      sk += src[c + hi * d + j];
      sv += src[2 * c + hi * d + j];
    }
    dk[e] = sk;
    dv[e] = sv;
  }
}

}  // namespace

// ---------------------------------------------------------------- launchers

void launch_fill(float* x, float value, int64_t n, cudaStream_t s) {
  if (n > 0) fill_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, value, n);
}
void launch_fill_u32(uint32_t* x, uint32_t bits, int64_t n, cudaStream_t s) {
  if (n > 0) fill_u32_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, bits, n);
}
void launch_gemm_scale_c(float* c, float beta, int64_t m, int64_t n, int64_t ldc, int64_t batch, int64_t stride_c,
                         cudaStream_t s) {
  const int64_t total = batch * m * n;
  if (total > 0) gemm_scale_c_kernel<<<blocks_for(total), kThreads, 0, s>>>(c, beta, m, n, ldc, batch, stride_c);
}
void launch_widen(float* dst, const void* src, int wt, int64_t n, cudaStream_t s) {
  if (n > 0) widen_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, src, wt, n);
}
void launch_cast_from_f32(uint16_t* dst, const float* src, int wt, int64_t n, cudaStream_t s) {
  if (n > 0) cast_from_f32_kernel<<<blocks_for(n), kThreads, 0, s>>>(dst, src, wt, n);
}

void launch_add_bias(float* out, const void* bias, int wt, int64_t n, int64_t o, cudaStream_t s) {
  if (n * o > 0) add_bias_kernel<<<blocks_for(n * o), kThreads, 0, s>>>(out, bias, wt, n, o);
}
void launch_bias_grad(float* dbias, const float* dout, double* work, int64_t n, int64_t o, cudaStream_t s) {
  if (o <= 0 || n <= 0) return;
  const int64_t chunks = col_chunks(n);
  bias_grad_partial_kernel<<<col_grid(o, chunks), kThreads, 0, s>>>(work, dout, n, o, col_chunk_rows(n));
  col_finish_kernel<<<blocks_for(o), kThreads, 0, s>>>(dbias, nullptr, work, chunks, o);
}
void launch_layernorm_forward(float* out, float* mean, float* rstd, const float* x, const void* w, int wt_w,
                              const void* b, int wt_b, int64_t n, int64_t c, float eps, cudaStream_t s) {
  if (n > 0)
    layernorm_forward_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(out, mean, rstd, x, w, wt_w, b, wt_b,
                                                                              c, eps);
}
void launch_layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const void* w,
                               int wt_w, const float* mean, const float* rstd, double* work, int64_t n, int64_t c,
                               cudaStream_t s) {
  if (n <= 0 || c <= 0) return;
  layernorm_backward_dx_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(dx, dout, x, w, wt_w, mean, rstd, c);
  const int64_t chunks = col_chunks(n);
  layernorm_dwdb_partial_kernel<<<col_grid(c, chunks), kThreads, 0, s>>>(work, dout, x, mean, rstd, n, c,
                                                                         col_chunk_rows(n), chunks);
  col_finish_kernel<<<blocks_for(c), kThreads, 0, s>>>(dw, db, work, chunks, c);
}
void launch_gelu_forward(float* out, const void* x, int wt, int64_t n, cudaStream_t s) {
  if (n > 0) gelu_forward_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, x, wt, n);
}
void launch_gelu_backward(float* dx, const void* x, int wt, const float* dout, int64_t n, cudaStream_t s) {
  if (n > 0) gelu_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(dx, x, wt, dout, n);
}
void launch_gelu_erf_forward(float* out, const void* x, int wt, int64_t n, cudaStream_t s) {
  if (n > 0) gelu_erf_forward_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, x, wt, n);
}
void launch_gelu_erf_backward(float* dx, const void* x, int wt, const float* dout, int64_t n, cudaStream_t s) {
  if (n > 0) gelu_erf_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(dx, x, wt, dout, n);
}

namespace {
unsigned attn_blocks(const AttnParams& a) {
  return static_cast<unsigned>((a.b * a.h * a.t + kAttnWarps - 1) / kAttnWarps);
}
}  // namespace

void launch_attention_forward(float* out, float* lse, const float* qkv, const AttnParams& a, cudaStream_t s) {
  if (a.b * a.h * a.t > 0) attention_forward_kernel<<<attn_blocks(a), 32 * kAttnWarps, 0, s>>>(out, lse, qkv, a);
}
void launch_attention_backward(float* dqkv, float* dsum, const float* dout, const float* qkv, const float* out,
                               const float* lse, const AttnParams& a, cudaStream_t s) {
  if (a.b * a.h * a.t == 0) return;
  attention_dsum_kernel<<<attn_blocks(a), 32 * kAttnWarps, 0, s>>>(dsum, dout, out, a);
  attention_dq_kernel<<<attn_blocks(a), 32 * kAttnWarps, 0, s>>>(dqkv, dout, qkv, lse, dsum, a);
  attention_dkv_kernel<<<attn_blocks(a), 32 * kAttnWarps, 0, s>>>(dqkv, dout, qkv, lse, dsum, a);
}
void launch_dropout(float* x, int64_t b, int64_t t, int64_t c, float p, uint64_t key, int64_t first_sample,
                    int64_t t0, cudaStream_t s) {
  const int64_t n = b * t * c;
  if (n > 0) dropout_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, b, t, c, p, key, first_sample, t0);
}

void launch_embedding_forward(float* out, const int32_t* ids, const void* table, int wt, int64_t n, int64_t c,
                              int64_t first, int64_t rows, int* err, cudaStream_t s) {
  if (n * c > 0)
    embedding_forward_kernel<<<blocks_for(n * c), kThreads, 0, s>>>(out, ids, table, wt, n, c, first, rows, err);
}
void launch_embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                               int64_t first, int64_t rows, int* err, cudaStream_t s) {
  if (n > 0 && c > 0)
    embedding_backward_kernel<<<blocks_for(c), kThreads, 0, s>>>(dtable, ids, dout, n, c, first, rows, err);
}
void launch_cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                          int64_t v, int64_t vp, float dloss_scale, int* err, cudaStream_t s) {
  if (n > 0)
    cross_entropy_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(losses, dlogits, logits, targets, v, vp,
                                                                          dloss_scale, err);
}
void launch_xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                           int64_t n, int64_t vs, int64_t first, int64_t v, cudaStream_t s) {
  if (n > 0)
    xent_shard_max_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(row_max, target_logit, logits, targets, vs,
                                                                           first, v);
}
void launch_xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n, int64_t vs,
                               int64_t first, int64_t v, cudaStream_t s) {
  if (n > 0)
    xent_shard_sum_exp_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(sum_exp, logits, row_max, vs, first,
                                                                               v);
}
void launch_xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                              const float* row_max, const float* sum_exp, const float* target_logit, int64_t n,
                              int64_t vs, int64_t first, int64_t v, float dloss_scale, int* err, cudaStream_t s) {
  if (n > 0)
    xent_shard_finish_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(
        losses, dlogits, logits, targets, row_max, sum_exp, target_logit, vs, first, v, dloss_scale, err);
}

void launch_add(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n > 0) add_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, a, b, n);
}
void launch_accumulate(float* acc, const float* x, int64_t n, cudaStream_t s) {
  if (n > 0) accumulate_kernel<<<blocks_for(n), kThreads, 0, s>>>(acc, x, n);
}
void launch_scale(float* x, float v, int64_t n, cudaStream_t s) {
  if (n > 0) scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, v, n);
}
void launch_sum(double* result, double* partial, const float* x, int64_t n, bool square, cudaStream_t s) {
  // The block count depends only on n: the same n always sums in the same order.
  int64_t blocks = (n + kThreads * 8 - 1) / (kThreads * 8);
  if (blocks < 1) blocks = 1;
  if (blocks > kSumPartials) blocks = kSumPartials;
  sum_partial_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(partial, x, n, square);
  sum_final_kernel<<<1, kSumPartials, 0, s>>>(result, partial, static_cast<int>(blocks));
}
void launch_adamw(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& k, cudaStream_t s) {
  if (n > 0) adamw_kernel<<<blocks_for(n), kThreads, 0, s>>>(p, g, m, v, n, k);
}

void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const void* w, int wt, int64_t n, int64_t c,
                            float eps, cudaStream_t s) {
  if (n > 0) rmsnorm_forward_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(out, rstd, x, w, wt, c, eps);
}
void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const void* w, int wt,
                             const float* rstd, double* work, int64_t n, int64_t c, cudaStream_t s) {
  if (n <= 0 || c <= 0) return;
  rmsnorm_backward_dx_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, s>>>(dx, dout, x, w, wt, rstd, c);
  const int64_t chunks = col_chunks(n);
  rmsnorm_dw_partial_kernel<<<col_grid(c, chunks), kThreads, 0, s>>>(work, dout, x, rstd, n, c, col_chunk_rows(n));
  col_finish_kernel<<<blocks_for(c), kThreads, 0, s>>>(dw, nullptr, work, chunks, c);
}
void launch_rope(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d, float theta, float sign,
                 cudaStream_t s) {
  const int64_t n = b * t * h * (d / 2);
  if (n > 0) rope_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, x, b, t, h, d, theta, sign);
}
void launch_swiglu_forward(float* out, const void* gate, int gt, const void* up, int ut, int64_t n, cudaStream_t s) {
  if (n > 0) swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, gate, gt, up, ut, n);
}
void launch_swiglu_backward(float* dgate, float* dup, const void* gate, int gt, const void* up, int ut,
                            const float* dout, int64_t n, cudaStream_t s) {
  if (n > 0) swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(dgate, dup, gate, gt, up, ut, dout, n);
}
void launch_gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                     int64_t kv, int64_t d, cudaStream_t s) {
  const int64_t n = b * t * 3 * h * d;
  if (n > 0) gqa_pack_kernel<<<blocks_for(n), kThreads, 0, s>>>(qkv, q, k, v, b * t, h, kv, d);
}
void launch_gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h,
                       int64_t kv, int64_t d, cudaStream_t s) {
  const int64_t rows = b * t;
  if (rows * h * d > 0) gqa_unpack_q_kernel<<<blocks_for(rows * h * d), kThreads, 0, s>>>(dq, dqkv, rows, h * d);
  if (rows * kv * d > 0)
    gqa_unpack_kv_kernel<<<blocks_for(rows * kv * d), kThreads, 0, s>>>(dk, dv, dqkv, rows, h, kv, d);
}

}  // namespace weft::cuda
