// CudaBackend: the Backend contract on one CUDA device (docs/gpu.md).
//
// Streams: every kernel, cuBLAS call and copy of this backend runs on the
// legacy default stream of its device, in call order. comm-nccl waits (on the
// GPU) for that stream before each collective and runs on its own stream, so
// communication overlaps the kernels queued after it; a Work's wait() returns
// once the collective is done. Host copies (copy_to_host, copy_from_host) and
// reductions that return a value (sum, sum_squares) synchronise.
//
// Memory: alloc() hands out zero-filled (alloc_uninitialized() unfilled)
// blocks from cudaMalloc, counted by category exactly as the CPU backend
// counts them (live tensor bytes, peaks since reset_peak()). Freed blocks go
// to a cache of free lists by rounded size (four sizes per power of two) and
// are handed out again; reuse is safe without events because every user of a
// block runs on the same stream in order. When cudaMalloc fails the cache is
// emptied and the allocation tried once more.
//
// Errors: every launch is checked (cudaGetLastError) and reported with the
// kernel's name; kernels that meet a bad embedding id or target set a device
// error word, reported at the next synchronize or host copy. With `debug`
// (option, or WEFT_CUDA_DEBUG=1) every kernel is followed by a synchronize,
// so an asynchronous fault names its kernel, and alloc_uninitialized fills
// its block with NaN (0xFFFFFFFF) so a read of unwritten memory shows.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "weft/backend.hpp"

namespace weft {

struct CudaOptions {
  int device = -1;     // -1: the rank's local GPU (local_rank % visible devices)
  bool tf32 = false;   // fp32 GEMMs on TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32)
  bool debug = false;  // synchronise and check after every kernel; NaN-fill uninitialised blocks
};

// Whether a CUDA device is visible; *why gets the reason when not.
bool cuda_device_available(std::string* why);

class CudaBackend final : public Backend {
 public:
  CudaBackend(const CudaOptions& options, const BackendEnv& env);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  Device device() const override { return Device::Cuda; }
  int threads() const override { return 1; }
  int device_index() const { return device_; }
  bool tf32() const { return tf32_; }

  Tensor alloc(const Shape& shape, DType dtype, MemCategory category) override;
  Tensor alloc_uninitialized(const Shape& shape, DType dtype, MemCategory category) override;
  MemStats mem_stats() const override;
  void reset_peak() override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void synchronize() override;

  void gemm(const GemmArgs& args) override;
  void add_bias(float* out, TypedPtr bias, int64_t n, int64_t o) override;
  void bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) override;
  void layernorm_forward(float* out, float* mean, float* rstd, TypedPtr x, TypedPtr w, TypedPtr b, int64_t n,
                         int64_t c, float eps) override;
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, TypedPtr x, TypedPtr w,
                          const float* mean, const float* rstd, int64_t n, int64_t c) override;
  void gelu_forward(float* out, TypedPtr x, int64_t n) override;
  void gelu_backward(float* dx, TypedPtr x, const float* dout, int64_t n) override;
  void gelu_erf_forward(float* out, TypedPtr x, int64_t n) override;
  void gelu_erf_backward(float* dx, TypedPtr x, const float* dout, int64_t n) override;
  void attention_forward(float* out, float* lse, TypedPtr qkv, int64_t b, int64_t t, int64_t c, int64_t h,
                         const AttentionMask& mask = {}) override;
  void attention_backward(float* dqkv, const float* dout, TypedPtr qkv, TypedPtr out, const float* lse,
                          int64_t b, int64_t t, int64_t c, int64_t h, const AttentionMask& mask = {}) override;
  void dropout(float* x, int64_t b, int64_t t, int64_t c, const DropoutArgs& args) override;
  void embedding_forward(float* out, const int32_t* ids, TypedPtr table, int64_t n, int64_t c, int64_t first,
                         int64_t rows) override;
  void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c, int64_t first,
                          int64_t rows) override;
  void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                     int64_t v, int64_t vp, float dloss_scale) override;
  void xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets, int64_t n,
                      int64_t vs, int64_t first, int64_t v) override;
  void xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n, int64_t vs,
                          int64_t first, int64_t v) override;
  void xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                         const float* row_max, const float* sum_exp, const float* target_logit, int64_t n,
                         int64_t vs, int64_t first, int64_t v, float dloss_scale) override;
  void add(float* out, const float* a, const float* b, int64_t n) override;
  void accumulate(float* acc, const float* x, int64_t n) override;
  void scale(float* x, float s, int64_t n) override;
  void fill(float* x, float value, int64_t n) override;
  double sum_squares(TypedPtr x, int64_t n) override;
  void accumulate_rounded(const Tensor& acc, const float* x) override;
  void zero(const Tensor& x) override;
  double sum(const float* x, int64_t n) override;
  void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, int64_t step, float grad_scale) override;
  void cast(const Tensor& dst, const Tensor& src) override;
  bool supports_compute_dtype(DType dtype) const override;
  void rmsnorm_forward(float* out, float* rstd, TypedPtr x, TypedPtr w, int64_t n, int64_t c,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, TypedPtr x, TypedPtr w, const float* rstd,
                        int64_t n, int64_t c) override;
  void rope_forward(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d, float theta) override;
  void rope_backward(float* dx, const float* dout, int64_t b, int64_t t, int64_t h, int64_t d, float theta) override;
  void swiglu_forward(float* out, TypedPtr gate, TypedPtr up, int64_t n) override;
  void swiglu_backward(float* dgate, float* dup, TypedPtr gate, TypedPtr up, const float* dout,
                       int64_t n) override;
  void gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                int64_t kv, int64_t d) override;
  void gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h, int64_t kv,
                  int64_t d) override;

  // Bytes held in the block cache now.
  int64_t cached_bytes() const;

  struct Arena;  // accounting + block cache, shared with every Storage handed out

 private:
  Tensor allocate(const Shape& shape, DType dtype, MemCategory category, bool zero, bool counted);
  // An uncounted fp32 scratch block of n elements (internal workspaces, not in mem_stats).
  Tensor scratch(int64_t n);
  // p as fp32: p itself, or widened (exactly) into `wide` (n elements of scratch).
  const float* widened(TypedPtr p, int64_t n, Tensor& wide, const char* op);
  void use_device() const;                     // makes this backend's device current on the calling thread
  void check_launch(const char* kernel) const;  // launch error; with debug, synchronise and check too
  void check_device_errors(const char* where);  // the kernels' error word, cleared once read
  double reduce(const float* x, int64_t n, bool square, const char* kernel);

  int device_ = 0;
  bool tf32_ = false;
  bool debug_ = false;
  cublasHandle_t cublas_ = nullptr;
  std::shared_ptr<Arena> arena_;
  int* error_word_ = nullptr;   // device int, ErrorCode of cuda_kernels.hpp
  double* reduce_buf_ = nullptr;  // device: [result, partials...]
};

}  // namespace weft
