// Launchers of the CUDA backend's kernels (cuda_kernels.cu). Plain C++ with
// no weft headers, so nvcc compiles only the kernels; cuda_backend.cpp checks
// shapes before it calls these and checks the launch after (with the kernel's
// name). Every launcher queues work on `s` and returns; n == 0 launches nothing.
// Letters as in weft/backend.hpp: B batch, T time, C channels, H heads, N rows.
// `wt` is the dtype of a weight or GEMM input: kF32, kBF16 or kF16 (the values
// of weft::DType). `err` is the backend's device error word: a kernel that
// meets a bad id or target sets it to one of the kErr codes (checked at the
// next host synchronisation).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace weft::cuda {

enum WeightType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
enum ErrorCode : int { kErrNone = 0, kErrEmbeddingId = 1, kErrTarget = 2 };

// ---- memory, casts
void launch_fill(float* x, float value, int64_t n, cudaStream_t s);                       // x[n] = value
void launch_fill_u32(uint32_t* x, uint32_t bits, int64_t n, cudaStream_t s);             // x[n] = bits
// C[b] = beta * C[b] for a GEMM with k = 0 (beta 0 writes zeros, even over NaN): C [batch][m, ldc]
void launch_gemm_scale_c(float* c, float beta, int64_t m, int64_t n, int64_t ldc, int64_t batch, int64_t stride_c,
                         cudaStream_t s);
// dst[n] (fp32) = widened src[n] of dtype wt
void launch_widen(float* dst, const void* src, int wt, int64_t n, cudaStream_t s);
// dst[n] (bf16 or f16 bits) = round to nearest even of src[n]
void launch_cast_from_f32(uint16_t* dst, const float* src, int wt, int64_t n, cudaStream_t s);

// ---- column sums (bias and norm weight gradients) in two passes: partial
// sums in double over fixed chunks of rows ([chunks, O] workspace), then the
// chunks in order; the result depends only on the shape.
inline int64_t col_chunk_rows(int64_t n) {
  const int64_t by_count = (n + 65534) / 65535;  // at most 65535 chunks (a grid's y dimension)
  return by_count > 256 ? by_count : 256;
}
inline int64_t col_chunks(int64_t n) { return n <= 0 ? 1 : (n + col_chunk_rows(n) - 1) / col_chunk_rows(n); }

// ---- bias, LayerNorm, GeLU
void launch_add_bias(float* out, const void* bias, int wt, int64_t n, int64_t o, cudaStream_t s);  // out[N,O] += bias[O]
// dbias[O] += column sums of dout[N,O]; work: col_chunks(n) * o doubles
void launch_bias_grad(float* dbias, const float* dout, double* work, int64_t n, int64_t o, cudaStream_t s);
void launch_layernorm_forward(float* out, float* mean, float* rstd, const float* x, const void* w, int wt_w,
                              const void* b, int wt_b, int64_t n, int64_t c, float eps, cudaStream_t s);
// dx[N,C] += ...; dw[C] += ...; db[C] += ...; work: 2 * col_chunks(n) * c doubles
void launch_layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const void* w,
                               int wt_w, const float* mean, const float* rstd, double* work, int64_t n, int64_t c,
                               cudaStream_t s);
void launch_gelu_forward(float* out, const void* x, int wt, int64_t n, cudaStream_t s);
void launch_gelu_backward(float* dx, const void* x, int wt, const float* dout, int64_t n, cudaStream_t s);
void launch_gelu_erf_forward(float* out, const void* x, int wt, int64_t n, cudaStream_t s);
void launch_gelu_erf_backward(float* dx, const void* x, int wt, const float* dout, int64_t n, cudaStream_t s);

// ---- attention: qkv[B,T,3C], out[B,T,C], lse[B,H,T], hs = C/H <= kAttnMaxHeadSize
inline constexpr int64_t kAttnMaxHeadSize = 256;
struct AttnParams {
  int64_t b = 0, t = 0, c = 0, h = 0, hs = 0;
  float scale = 1.f;
  const int32_t* doc_start = nullptr;  // [B,T] or null
  float dropout = 0.f;
  uint64_t dropout_key = 0;
  int64_t first_sample = 0, first_head = 0;
};
void launch_attention_forward(float* out, float* lse, const float* qkv, const AttnParams& a, cudaStream_t s);
// dsum: workspace [B,H,T]; dqkv[B,T,3C] overwritten
void launch_attention_backward(float* dqkv, float* dsum, const float* dout, const float* qkv, const float* out,
                               const float* lse, const AttnParams& a, cudaStream_t s);
// x[B,T,C] *= keep / (1 - p), the counter-based RNG of weft/rng.hpp
void launch_dropout(float* x, int64_t b, int64_t t, int64_t c, float p, uint64_t key, int64_t first_sample,
                    int64_t t0, cudaStream_t s);

// ---- embedding, cross entropy
void launch_embedding_forward(float* out, const int32_t* ids, const void* table, int wt, int64_t n, int64_t c,
                              int64_t first, int64_t rows, int* err, cudaStream_t s);
void launch_embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                               int64_t first, int64_t rows, int* err, cudaStream_t s);
void launch_cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                          int64_t v, int64_t vp, float dloss_scale, int* err, cudaStream_t s);
void launch_xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                           int64_t n, int64_t vs, int64_t first, int64_t v, cudaStream_t s);
void launch_xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n, int64_t vs,
                               int64_t first, int64_t v, cudaStream_t s);
void launch_xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                              const float* row_max, const float* sum_exp, const float* target_logit, int64_t n,
                              int64_t vs, int64_t first, int64_t v, float dloss_scale, int* err, cudaStream_t s);

// ---- elementwise, reductions, optimizer
void launch_add(float* out, const float* a, const float* b, int64_t n, cudaStream_t s);
void launch_accumulate(float* acc, const float* x, int64_t n, cudaStream_t s);
void launch_scale(float* x, float v, int64_t n, cudaStream_t s);
// *result (device, one double) = sum of x[n] (or of x^2), in double, in a fixed
// order; partial: device workspace of kSumPartials doubles.
inline constexpr int kSumPartials = 1024;
void launch_sum(double* result, double* partial, const float* x, int64_t n, bool square, cudaStream_t s);
struct AdamWParams {
  float lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, wd, bc1, bc2, grad_scale;
};
void launch_adamw(float* p, const float* g, float* m, float* v, int64_t n, const AdamWParams& k, cudaStream_t s);

// ---- Llama family
void launch_rmsnorm_forward(float* out, float* rstd, const float* x, const void* w, int wt, int64_t n, int64_t c,
                            float eps, cudaStream_t s);
// dx overwritten, dw[C] += ...; work: col_chunks(n) * c doubles
void launch_rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const void* w, int wt,
                             const float* rstd, double* work, int64_t n, int64_t c, cudaStream_t s);
// sign +1 forward, -1 backward (the transposed rotation); out may alias x
void launch_rope(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d, float theta, float sign,
                 cudaStream_t s);
// gate and up are f32, bf16 or f16 (gt, ut as load_w reads them)
void launch_swiglu_forward(float* out, const void* gate, int gt, const void* up, int ut, int64_t n, cudaStream_t s);
void launch_swiglu_backward(float* dgate, float* dup, const void* gate, int gt, const void* up, int ut,
                            const float* dout, int64_t n, cudaStream_t s);
void launch_gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                     int64_t kv, int64_t d, cudaStream_t s);
void launch_gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h,
                       int64_t kv, int64_t d, cudaStream_t s);

}  // namespace weft::cuda
