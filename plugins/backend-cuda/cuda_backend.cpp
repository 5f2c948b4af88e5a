#include "cuda_backend.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include "cuda_kernels.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

static_assert(static_cast<int>(DType::F32) == cuda::kF32 && static_cast<int>(DType::BF16) == cuda::kBF16 &&
                  static_cast<int>(DType::F16) == cuda::kF16,
              "cuda_kernels.hpp's weight types are weft::DType's values");

constexpr cudaStream_t kStream = nullptr;  // the legacy default stream (see cuda_backend.hpp)

void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess)
    throw Error("cuda backend: " + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

void cublas_check(cublasStatus_t s, const std::string& what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Error("cuda backend: " + what + ": " + cublasGetStatusString(s));
}

// The kernel dtype code of a weight or GEMM input (f32, bf16, f16 only).
int weight_type(TypedPtr p, const char* op) {
  if (p.dtype == DType::F32 || p.dtype == DType::BF16 || p.dtype == DType::F16) return static_cast<int>(p.dtype);
  throw Error(std::string("cuda backend: ") + op + ": an input of dtype " + dtype_name(p.dtype) +
              " (f32, bf16, f16 only)");
}

cudaDataType_t cublas_type(DType t) {
  switch (t) {
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

int blas_int(int64_t v, const char* what) {
  WEFT_ASSERT(v >= 0 && v <= std::numeric_limits<int>::max(),
              std::string("gemm: ") + what + " out of cuBLAS int range: " + std::to_string(v));
  return static_cast<int>(v);
}

// Elements from the first to the last one a (batched, strided) operand reaches.
int64_t operand_extent(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  if (rows == 0 || cols == 0 || batch == 0) return 0;
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

// Cache sizes: at least 512 bytes, four sizes per power of two (at most 25% over).
size_t rounded_size(size_t bytes) {
  constexpr size_t kMin = 512;
  if (bytes <= kMin) return kMin;
  const size_t step = std::max(kMin, std::bit_floor(bytes) / 4);
  return (bytes + step - 1) / step * step;
}

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}

}  // namespace

bool cuda_device_available(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  if (count == 0) {
    if (why) *why = "cudaGetDeviceCount found 0 devices";
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Memory: accounting by category and a cache of freed blocks

struct CudaBackend::Arena {
  mutable std::mutex mutex;
  int device = 0;
  MemStats stats;
  std::map<size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
  int64_t cached = 0;                                // bytes in free_blocks

  ~Arena() {
    cudaSetDevice(device);
    for (auto& [size, blocks] : free_blocks)
      for (void* p : blocks) cudaFree(p);  // errors ignored: the process may be tearing CUDA down
  }
  void add(MemCategory category, int64_t bytes) {  // caller holds mutex
    const int i = static_cast<int>(category);
    stats.current[i] += bytes;
    stats.peak[i] = std::max(stats.peak[i], stats.current[i]);
  }
  void* take(size_t size) {  // caller holds mutex
    auto it = free_blocks.find(size);
    if (it == free_blocks.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    cached -= static_cast<int64_t>(size);
    return p;
  }
  void give_back(void* p, size_t size) {  // caller holds mutex
    free_blocks[size].push_back(p);
    cached += static_cast<int64_t>(size);
  }
  void free_cache() {  // caller holds mutex; cudaFree waits for the device
    for (auto& [size, blocks] : free_blocks)
      for (void* p : blocks) cudaFree(p);
    free_blocks.clear();
    cached = 0;
  }
};

CudaBackend::CudaBackend(const CudaOptions& options, const BackendEnv& env)
    : tf32_(options.tf32), debug_(options.debug || env_flag("WEFT_CUDA_DEBUG")), arena_(std::make_shared<Arena>()) {
  std::string why;
  if (!cuda_device_available(&why)) throw Error("cuda backend: no CUDA device (" + why + ")");
  int count = 0;
  cuda_check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  device_ = options.device >= 0 ? options.device : env.local_rank % count;
  if (device_ >= count)
    throw Error("cuda backend: device " + std::to_string(device_) + " requested, " + std::to_string(count) +
                " visible");
  arena_->device = device_;
  cuda_check(cudaSetDevice(device_), "cudaSetDevice(" + std::to_string(device_) + ")");
  cublas_check(cublasCreate(&cublas_), "cublasCreate");
  cublas_check(cublasSetStream(cublas_, kStream), "cublasSetStream");
  // Default math: fp32 GEMMs stay fp32 unless tf32 (chosen per call through the compute type).
  cublas_check(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  cuda_check(cudaMalloc(reinterpret_cast<void**>(&error_word_), sizeof(int)), "cudaMalloc (error word)");
  cuda_check(cudaMemset(error_word_, 0, sizeof(int)), "cudaMemset (error word)");
  cuda_check(cudaMalloc(reinterpret_cast<void**>(&reduce_buf_), (1 + cuda::kSumPartials) * sizeof(double)),
             "cudaMalloc (reduction buffer)");
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  cudaStreamSynchronize(kStream);
  if (cublas_) cublasDestroy(cublas_);
  cudaFree(error_word_);
  cudaFree(reduce_buf_);
}

void CudaBackend::use_device() const { cuda_check(cudaSetDevice(device_), "cudaSetDevice"); }

void CudaBackend::check_launch(const char* kernel) const {
  cuda_check(cudaGetLastError(), std::string("kernel ") + kernel + " (launch)");
  if (debug_) cuda_check(cudaStreamSynchronize(kStream), std::string("kernel ") + kernel);
  if (debug_) const_cast<CudaBackend*>(this)->check_device_errors(kernel);
}

void CudaBackend::check_device_errors(const char* where) {
  int code = 0;
  cuda_check(cudaMemcpy(&code, error_word_, sizeof code, cudaMemcpyDeviceToHost),
             std::string("reading the kernel error word at ") + where);
  if (code == cuda::kErrNone) return;
  cuda_check(cudaMemset(error_word_, 0, sizeof(int)), "clearing the kernel error word");
  const char* what = code == cuda::kErrEmbeddingId ? "embedding: a negative token id"
                     : code == cuda::kErrTarget    ? "cross_entropy: a target >= the vocabulary size"
                                                   : "an unknown kernel error";
  throw Error(std::string("cuda backend: ") + what + " (found by a kernel, reported at " + where + ")");
}

Tensor CudaBackend::alloc(const Shape& shape, DType dtype, MemCategory category) {
  return allocate(shape, dtype, category, true, true);
}

Tensor CudaBackend::alloc_uninitialized(const Shape& shape, DType dtype, MemCategory category) {
  return allocate(shape, dtype, category, false, true);
}

Tensor CudaBackend::scratch(int64_t n) {
  return allocate({n}, DType::F32, MemCategory::Workspace, false, false);
}

const float* CudaBackend::widened(TypedPtr p, int64_t n, Tensor& wide, const char* op) {
  const int type = weight_type(p, op);
  if (p.dtype == DType::F32) return static_cast<const float*>(p.data);
  wide = scratch(n);
  cuda::launch_widen(wide.data<float>(), p.data, type, n, kStream);
  check_launch(op);
  return wide.data<float>();
}

Tensor CudaBackend::allocate(const Shape& shape, DType dtype, MemCategory category, bool zero, bool counted) {
  for (int64_t d : shape) WEFT_ASSERT(d >= 0, "alloc: negative dimension in " + shape_str(shape));
  const int ci = static_cast<int>(category);
  WEFT_ASSERT(ci >= 0 && ci < kMemCategoryCount, "alloc: bad memory category");
  use_device();
  const int64_t bytes = shape_numel(shape) * static_cast<int64_t>(dtype_size(dtype));
  const size_t size = rounded_size(static_cast<size_t>(bytes));
  void* data = nullptr;
  {
    std::lock_guard<std::mutex> lock(arena_->mutex);
    data = arena_->take(size);
    if (!data) {
      cudaError_t e = cudaMalloc(&data, size);
      if (e == cudaErrorMemoryAllocation) {  // give the cache back to the device and try once more
        cudaGetLastError();
        arena_->free_cache();
        e = cudaMalloc(&data, size);
      }
      if (e != cudaSuccess) {
        cudaGetLastError();
        std::string live;
        for (int i = 0; i < kMemCategoryCount; ++i)
          live += std::string(i ? ", " : "") + mem_category_name(static_cast<MemCategory>(i)) + " " +
                  std::to_string(arena_->stats.current[i]);
        throw Error("cuda backend: out of device memory allocating " + std::to_string(bytes) + " bytes of " +
                    mem_category_name(category) + " " + shape_str(shape) + " on device " + std::to_string(device_) +
                    " (" + cudaGetErrorString(e) + "; live bytes: " + live + ")");
      }
    }
    if (counted) arena_->add(category, bytes);
  }
  if (bytes > 0 && zero) cuda_check(cudaMemsetAsync(data, 0, static_cast<size_t>(bytes), kStream), "alloc: zero fill");
  if (bytes > 0 && !zero && debug_)
    cuda_check(cudaMemsetAsync(data, 0xFF, static_cast<size_t>(bytes), kStream), "alloc: NaN fill (debug)");
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->bytes = static_cast<size_t>(bytes);
  storage->device = Device::Cuda;
  storage->release = [arena = arena_, category, bytes, size, counted](Storage& s) {
    std::lock_guard<std::mutex> lock(arena->mutex);
    if (counted) arena->add(category, -bytes);
    arena->give_back(s.data, size);  // reused in stream order: see cuda_backend.hpp
    s.data = nullptr;
  };
  return Tensor(std::move(storage), 0, shape, dtype);
}

MemStats CudaBackend::mem_stats() const {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  return arena_->stats;
}

void CudaBackend::reset_peak() {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  arena_->stats.peak = arena_->stats.current;
}

int64_t CudaBackend::cached_bytes() const {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  return arena_->cached;
}

void CudaBackend::copy_to_host(void* dst, const Tensor& src) {
  WEFT_ASSERT(src.device() == Device::Cuda, "cuda backend: copy_to_host from a non-CUDA tensor");
  use_device();
  if (src.bytes() > 0)
    cuda_check(cudaMemcpy(dst, src.raw(), src.bytes(), cudaMemcpyDeviceToHost),
               "copy_to_host of " + std::to_string(src.bytes()) + " bytes");
  check_device_errors("copy_to_host");
}

void CudaBackend::copy_from_host(const Tensor& dst, const void* src) {
  WEFT_ASSERT(dst.device() == Device::Cuda, "cuda backend: copy_from_host into a non-CUDA tensor");
  use_device();
  if (dst.bytes() > 0)
    cuda_check(cudaMemcpy(dst.raw(), src, dst.bytes(), cudaMemcpyHostToDevice),
               "copy_from_host of " + std::to_string(dst.bytes()) + " bytes");
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  WEFT_ASSERT(dst.device() == Device::Cuda && src.device() == Device::Cuda, "cuda backend: copy of a non-CUDA tensor");
  WEFT_ASSERT(dst.bytes() == src.bytes(),
              "copy: " + std::to_string(src.bytes()) + " bytes into " + std::to_string(dst.bytes()));
  use_device();
  const size_t bytes = dst.bytes();
  char* d = static_cast<char*>(dst.raw());
  const char* s = static_cast<const char*>(src.raw());
  if (bytes == 0 || d == s) return;
  if (d + bytes <= s || s + bytes <= d) {
    cuda_check(cudaMemcpyAsync(d, s, bytes, cudaMemcpyDeviceToDevice, kStream), "copy (device to device)");
  } else {  // overlapping views: through a scratch block
    Tensor tmp = scratch(static_cast<int64_t>((bytes + 3) / 4));
    cuda_check(cudaMemcpyAsync(tmp.raw(), s, bytes, cudaMemcpyDeviceToDevice, kStream), "copy (to scratch)");
    cuda_check(cudaMemcpyAsync(d, tmp.raw(), bytes, cudaMemcpyDeviceToDevice, kStream), "copy (from scratch)");
  }
  check_launch("copy");
}

void CudaBackend::synchronize() {
  use_device();
  cuda_check(cudaStreamSynchronize(kStream), "synchronize");
  check_device_errors("synchronize");
}

// ---------------------------------------------------------------------------
// GEMM
//
// Row-major C[m,n] = op(A)[m,k] op(B)[k,n] is column-major C^T[n,m] =
// op(B)^T op(A)^T, and a row-major matrix with leading dimension ld is its
// transpose column-major with the same ld. So cuBLAS gets (B, A) swapped,
// m and n swapped, and each operand's transpose flag as given.

void CudaBackend::gemm(const GemmArgs& args) {
  WEFT_ASSERT(args.m >= 0 && args.n >= 0 && args.k >= 0 && args.batch >= 0, "gemm: negative size");
  if (args.m == 0 || args.n == 0 || args.batch == 0) return;
  WEFT_ASSERT(args.ldc >= args.n, "gemm: ldc < n");
  use_device();
  if (args.k == 0) {  // C = beta * C (beta 0 writes zeros)
    cuda::launch_gemm_scale_c(args.c, args.beta, args.m, args.n, args.ldc, args.batch, args.stride_c, kStream);
    check_launch("gemm_scale_c");
    return;
  }
  WEFT_ASSERT(args.lda >= (args.trans_a ? args.m : args.k), "gemm: lda too small");
  WEFT_ASSERT(args.ldb >= (args.trans_b ? args.k : args.n), "gemm: ldb too small");
  TypedPtr a = args.a, b = args.b;
  weight_type(a, "gemm");
  weight_type(b, "gemm");
  Tensor wide_a, wide_b;
  if (a.dtype != b.dtype) {  // cuBLAS wants one input type: widen both (exact) to fp32
    const int64_t na = operand_extent(args.trans_a ? args.k : args.m, args.trans_a ? args.m : args.k, args.lda,
                                      args.batch, args.stride_a);
    const int64_t nb = operand_extent(args.trans_b ? args.n : args.k, args.trans_b ? args.k : args.n, args.ldb,
                                      args.batch, args.stride_b);
    wide_a = scratch(na);
    wide_b = scratch(nb);
    cuda::launch_widen(wide_a.data<float>(), a.data, static_cast<int>(a.dtype), na, kStream);
    cuda::launch_widen(wide_b.data<float>(), b.data, static_cast<int>(b.dtype), nb, kStream);
    check_launch("gemm (widen mixed inputs)");
    a = TypedPtr(wide_a.data<float>());
    b = TypedPtr(wide_b.data<float>());
  }
  const cudaDataType_t type = cublas_type(a.dtype);
  const cublasComputeType_t compute =
      (a.dtype == DType::F32 && tf32_) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cublasOperation_t op_a = args.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = args.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const float alpha = args.alpha, beta = args.beta;
  cublas_check(cublasGemmStridedBatchedEx(cublas_, op_b, op_a, blas_int(args.n, "n"), blas_int(args.m, "m"),
                                          blas_int(args.k, "k"), &alpha, b.data, type, blas_int(args.ldb, "ldb"),
                                          args.stride_b, a.data, type, blas_int(args.lda, "lda"), args.stride_a,
                                          &beta, args.c, CUDA_R_32F, blas_int(args.ldc, "ldc"), args.stride_c,
                                          blas_int(args.batch, "batch"), compute, CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx (m " + std::to_string(args.m) + ", n " + std::to_string(args.n) + ", k " +
                   std::to_string(args.k) + ", " + dtype_name(a.dtype) + ")");
  check_launch("gemm");
}

// ---------------------------------------------------------------------------
// Kernels: shape checks as the CPU backend's, then the launch, then its check.

void CudaBackend::add_bias(float* out, TypedPtr bias, int64_t n, int64_t o) {
  use_device();
  cuda::launch_add_bias(out, bias.data, weight_type(bias, "add_bias"), n, o, kStream);
  check_launch("add_bias");
}

void CudaBackend::bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) {
  use_device();
  Tensor work = scratch(2 * cuda::col_chunks(n) * o);  // [chunks, O] doubles
  cuda::launch_bias_grad(dbias, dout, reinterpret_cast<double*>(work.raw()), n, o, kStream);
  check_launch("bias_grad");
}

void CudaBackend::layernorm_forward(float* out, float* mean, float* rstd, TypedPtr x_in, TypedPtr w, TypedPtr b,
                                    int64_t n, int64_t c, float eps) {
  use_device();
  Tensor wide;
  const float* x = widened(x_in, n * c, wide, "layernorm_forward");  // [N,C] fp32
  cuda::launch_layernorm_forward(out, mean, rstd, x, w.data, weight_type(w, "layernorm_forward"), b.data,
                                 weight_type(b, "layernorm_forward"), n, c, eps, kStream);
  check_launch("layernorm_forward");
}

void CudaBackend::layernorm_backward(float* dx, float* dw, float* db, const float* dout, TypedPtr x_in, TypedPtr w,
                                     const float* mean, const float* rstd, int64_t n, int64_t c) {
  use_device();
  Tensor wide;
  const float* x = widened(x_in, n * c, wide, "layernorm_backward");  // [N,C] fp32
  Tensor work = scratch(4 * cuda::col_chunks(n) * c);  // [2, chunks, C] doubles
  cuda::launch_layernorm_backward(dx, dw, db, dout, x, w.data, weight_type(w, "layernorm_backward"), mean, rstd,
                                  reinterpret_cast<double*>(work.raw()), n, c, kStream);
  check_launch("layernorm_backward");
}

void CudaBackend::gelu_forward(float* out, TypedPtr x, int64_t n) {
  use_device();
  cuda::launch_gelu_forward(out, x.data, weight_type(x, "gelu_forward"), n, kStream);
  check_launch("gelu_forward");
}

void CudaBackend::gelu_backward(float* dx, TypedPtr x, const float* dout, int64_t n) {
  use_device();
  cuda::launch_gelu_backward(dx, x.data, weight_type(x, "gelu_backward"), dout, n, kStream);
  check_launch("gelu_backward");
}

void CudaBackend::gelu_erf_forward(float* out, TypedPtr x, int64_t n) {
  use_device();
  cuda::launch_gelu_erf_forward(out, x.data, weight_type(x, "gelu_erf_forward"), n, kStream);
  check_launch("gelu_erf_forward");
}

void CudaBackend::gelu_erf_backward(float* dx, TypedPtr x, const float* dout, int64_t n) {
  use_device();
  cuda::launch_gelu_erf_backward(dx, x.data, weight_type(x, "gelu_erf_backward"), dout, n, kStream);
  check_launch("gelu_erf_backward");
}

namespace {
cuda::AttnParams attn_params(int64_t b, int64_t t, int64_t c, int64_t h, const AttentionMask& mask) {
  WEFT_ASSERT(b >= 0 && t >= 0 && c > 0 && h > 0 && c % h == 0,
              "attention: channels " + std::to_string(c) + " not divisible by heads " + std::to_string(h));
  WEFT_ASSERT(mask.dropout >= 0.f && mask.dropout < 1.f, "attention: dropout must be in [0, 1)");
  cuda::AttnParams a;
  a.b = b, a.t = t, a.c = c, a.h = h, a.hs = c / h;
  if (a.hs > cuda::kAttnMaxHeadSize)
    throw Error("cuda backend: attention: head size " + std::to_string(a.hs) + " > " +
                std::to_string(cuda::kAttnMaxHeadSize) + " (the kernel's limit)");
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.hs)));
  a.doc_start = mask.doc_start;
  a.dropout = mask.dropout;
  a.dropout_key = mask.dropout_key;
  a.first_sample = mask.first_sample;
  a.first_head = mask.first_head;
  return a;
}
}  // namespace

void CudaBackend::attention_forward(float* out, float* lse, TypedPtr qkv_in, int64_t b, int64_t t, int64_t c,
                                    int64_t h, const AttentionMask& mask) {
  const cuda::AttnParams a = attn_params(b, t, c, h, mask);
  use_device();
  Tensor wide;
  const float* qkv = widened(qkv_in, b * t * 3 * c, wide, "attention_forward");  // [B,T,3C] fp32
  cuda::launch_attention_forward(out, lse, qkv, a, kStream);
  check_launch("attention_forward");
}

void CudaBackend::attention_backward(float* dqkv, const float* dout, TypedPtr qkv_in, TypedPtr out_in,
                                     const float* lse, int64_t b, int64_t t, int64_t c, int64_t h,
                                     const AttentionMask& mask) {
  const cuda::AttnParams a = attn_params(b, t, c, h, mask);
  use_device();
  Tensor wide;
  const float* qkv = widened(qkv_in, b * t * 3 * c, wide, "attention_backward");  // [B,T,3C] fp32
  Tensor wide_out;
  const float* out = widened(out_in, b * t * c, wide_out, "attention_backward");  // [B,T,C] fp32
  Tensor dsum = scratch(b * h * t);  // [B,H,T]
  cuda::launch_attention_backward(dqkv, dsum.data<float>(), dout, qkv, out, lse, a, kStream);
  check_launch("attention_backward");
}

void CudaBackend::dropout(float* x, int64_t b, int64_t t, int64_t c, const DropoutArgs& args) {
  if (!(args.p > 0.f)) return;
  WEFT_ASSERT(args.p < 1.f, "dropout: p must be in [0, 1)");
  use_device();
  cuda::launch_dropout(x, b, t, c, args.p, args.key, args.first_sample, args.t0, kStream);
  check_launch("dropout");
}

void CudaBackend::embedding_forward(float* out, const int32_t* ids, TypedPtr table, int64_t n, int64_t c,
                                    int64_t first, int64_t rows) {
  use_device();
  cuda::launch_embedding_forward(out, ids, table.data, weight_type(table, "embedding_forward"), n, c, first, rows,
                                 error_word_, kStream);
  check_launch("embedding_forward");
}

void CudaBackend::embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                                     int64_t first, int64_t rows) {
  use_device();
  cuda::launch_embedding_backward(dtable, ids, dout, n, c, first, rows, error_word_, kStream);
  check_launch("embedding_backward");
}

void CudaBackend::cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                int64_t n, int64_t v, int64_t vp, float dloss_scale) {
  WEFT_ASSERT(v > 0 && vp >= v, "cross_entropy: need 0 < v <= vp");
  use_device();
  cuda::launch_cross_entropy(losses, dlogits, logits, targets, n, v, vp, dloss_scale, error_word_, kStream);
  check_launch("cross_entropy");
}

void CudaBackend::xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                                 int64_t n, int64_t vs, int64_t first, int64_t v) {
  use_device();
  cuda::launch_xent_shard_max(row_max, target_logit, logits, targets, n, vs, first, v, kStream);
  check_launch("xent_shard_max");
}

void CudaBackend::xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n,
                                     int64_t vs, int64_t first, int64_t v) {
  use_device();
  cuda::launch_xent_shard_sum_exp(sum_exp, logits, row_max, n, vs, first, v, kStream);
  check_launch("xent_shard_sum_exp");
}

void CudaBackend::xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                    const float* row_max, const float* sum_exp, const float* target_logit,
                                    int64_t n, int64_t vs, int64_t first, int64_t v, float dloss_scale) {
  use_device();
  cuda::launch_xent_shard_finish(losses, dlogits, logits, targets, row_max, sum_exp, target_logit, n, vs, first, v,
                                 dloss_scale, error_word_, kStream);
  check_launch("xent_shard_finish");
}

void CudaBackend::add(float* out, const float* a, const float* b, int64_t n) {
  use_device();
  cuda::launch_add(out, a, b, n, kStream);
  check_launch("add");
}

void CudaBackend::accumulate(float* acc, const float* x, int64_t n) {
  use_device();
  cuda::launch_accumulate(acc, x, n, kStream);
  check_launch("accumulate");
}

void CudaBackend::scale(float* x, float s, int64_t n) {
  use_device();
  cuda::launch_scale(x, s, n, kStream);
  check_launch("scale");
}

void CudaBackend::fill(float* x, float value, int64_t n) {
  use_device();
  cuda::launch_fill(x, value, n, kStream);
  check_launch("fill");
}

double CudaBackend::reduce(const float* x, int64_t n, bool square, const char* kernel) {
  if (n <= 0) return 0.0;
  use_device();
  cuda::launch_sum(reduce_buf_, reduce_buf_ + 1, x, n, square, kStream);
  check_launch(kernel);
  double result = 0.0;
  cuda_check(cudaMemcpy(&result, reduce_buf_, sizeof result, cudaMemcpyDeviceToHost), std::string(kernel) + " readout");
  return result;
}

double CudaBackend::sum_squares(TypedPtr x, int64_t n) {
  if (x.dtype == DType::F32) return reduce(static_cast<const float*>(x.data), n, true, "sum_squares");
  // 16-bit: widened (exactly) a chunk at a time, so the scratch stays bounded.
  constexpr int64_t kChunk = int64_t{1} << 24;
  const size_t elem = 2;
  double total = 0.0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t len = std::min(kChunk, n - i0);
    Tensor wide;
    const float* w = widened(TypedPtr(static_cast<const char*>(x.data) + i0 * elem, x.dtype), len, wide, "sum_squares");
    total += reduce(w, len, true, "sum_squares");
  }
  return total;
}

void CudaBackend::accumulate_rounded(const Tensor& acc, const float* x) {
  WEFT_ASSERT(acc.device() == Device::Cuda, "cuda backend: accumulate_rounded into a non-CUDA tensor");
  const int64_t n = acc.numel();
  if (acc.dtype() == DType::F32) return accumulate(acc.data<float>(), x, n);
  // Widened exactly, summed in fp32, rounded once by the cast back.
  Tensor wide = scratch(std::max<int64_t>(n, 1));
  Tensor sum = wide.view(0, {n});
  cast(sum, acc);
  accumulate(sum.data<float>(), x, n);
  cast(acc, sum);
}

void CudaBackend::zero(const Tensor& x) {
  WEFT_ASSERT(x.device() == Device::Cuda, "cuda backend: zero of a non-CUDA tensor");
  use_device();
  if (x.bytes() > 0) cuda_check(cudaMemsetAsync(x.raw(), 0, x.bytes(), kStream), "zero");
}

double CudaBackend::sum(const float* x, int64_t n) { return reduce(x, n, false, "sum"); }

void CudaBackend::adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                        float eps, float weight_decay, int64_t step, float grad_scale) {
  WEFT_ASSERT(step >= 1, "adamw: step counts from 1");
  cuda::AdamWParams k{};
  k.lr = lr, k.beta1 = beta1, k.beta2 = beta2, k.eps = eps, k.wd = weight_decay, k.grad_scale = grad_scale;
  k.one_minus_beta1 = 1.f - beta1, k.one_minus_beta2 = 1.f - beta2;
  k.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step)));
  k.bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step)));
  use_device();
  cuda::launch_adamw(p, g, m, v, n, k, kStream);
  check_launch("adamw");
}

bool CudaBackend::supports_compute_dtype(DType dtype) const {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

void CudaBackend::cast(const Tensor& dst, const Tensor& src) {
  WEFT_ASSERT(dst.numel() == src.numel(), "cast: " + shape_str(src.shape()) + " into " + shape_str(dst.shape()));
  WEFT_ASSERT(dst.device() == Device::Cuda && src.device() == Device::Cuda, "cuda backend: cast of a non-CUDA tensor");
  const int64_t n = src.numel();
  const DType from = src.dtype(), to = dst.dtype();
  use_device();
  if (from == to) {
    if (n > 0 && dst.raw() != src.raw()) copy(dst, src);
    return;
  }
  if (from == DType::F32 && (to == DType::BF16 || to == DType::F16)) {
    cuda::launch_cast_from_f32(dst.data<uint16_t>(), src.data<float>(), static_cast<int>(to), n, kStream);
  } else if ((from == DType::BF16 || from == DType::F16) && to == DType::F32) {
    cuda::launch_widen(dst.data<float>(), src.raw(), static_cast<int>(from), n, kStream);
  } else {
    throw Error(std::string("cuda backend: cast from ") + dtype_name(from) + " to " + dtype_name(to) +
                " is not supported (f32<->bf16, f32<->f16, same dtype)");
  }
  check_launch("cast");
}

// ---------------------------------------------------------------------------
// Llama family

void CudaBackend::rmsnorm_forward(float* out, float* rstd, TypedPtr x_in, TypedPtr w, int64_t n, int64_t c,
                                  float eps) {
  use_device();
  Tensor wide;
  const float* x = widened(x_in, n * c, wide, "rmsnorm_forward");  // [N,C] fp32
  cuda::launch_rmsnorm_forward(out, rstd, x, w.data, weight_type(w, "rmsnorm_forward"), n, c, eps, kStream);
  check_launch("rmsnorm_forward");
}

void CudaBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, TypedPtr x_in, TypedPtr w,
                                   const float* rstd, int64_t n, int64_t c) {
  use_device();
  Tensor wide;
  const float* x = widened(x_in, n * c, wide, "rmsnorm_backward");  // [N,C] fp32
  Tensor work = scratch(2 * cuda::col_chunks(n) * c);  // [chunks, C] doubles
  cuda::launch_rmsnorm_backward(dx, dw, dout, x, w.data, weight_type(w, "rmsnorm_backward"), rstd,
                                reinterpret_cast<double*>(work.raw()), n, c, kStream);
  check_launch("rmsnorm_backward");
}

void CudaBackend::rope_forward(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d, float theta) {
  WEFT_ASSERT(d > 0 && d % 2 == 0, "rope: head dimension " + std::to_string(d) + " must be even");
  use_device();
  cuda::launch_rope(out, x, b, t, h, d, theta, 1.f, kStream);
  check_launch("rope_forward");
}

void CudaBackend::rope_backward(float* dx, const float* dout, int64_t b, int64_t t, int64_t h, int64_t d,
                                float theta) {
  WEFT_ASSERT(d > 0 && d % 2 == 0, "rope: head dimension " + std::to_string(d) + " must be even");
  use_device();
  cuda::launch_rope(dx, dout, b, t, h, d, theta, -1.f, kStream);
  check_launch("rope_backward");
}

void CudaBackend::swiglu_forward(float* out, TypedPtr gate, TypedPtr up, int64_t n) {
  use_device();
  cuda::launch_swiglu_forward(out, gate.data, weight_type(gate, "swiglu_forward"), up.data,
                              weight_type(up, "swiglu_forward"), n, kStream);
  check_launch("swiglu_forward");
}

void CudaBackend::swiglu_backward(float* dgate, float* dup, TypedPtr gate, TypedPtr up, const float* dout,
                                  int64_t n) {
  use_device();
  cuda::launch_swiglu_backward(dgate, dup, gate.data, weight_type(gate, "swiglu_backward"), up.data,
                               weight_type(up, "swiglu_backward"), dout, n, kStream);
  check_launch("swiglu_backward");
}

void CudaBackend::gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t,
                           int64_t h, int64_t kv, int64_t d) {
  WEFT_ASSERT(h > 0 && kv > 0 && h % kv == 0 && d > 0,
              "gqa: heads " + std::to_string(h) + " not divisible by kv heads " + std::to_string(kv));
  use_device();
  cuda::launch_gqa_pack(qkv, q, k, v, b, t, h, kv, d, kStream);
  check_launch("gqa_pack");
}

void CudaBackend::gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h,
                             int64_t kv, int64_t d) {
  WEFT_ASSERT(h > 0 && kv > 0 && h % kv == 0 && d > 0,
              "gqa: heads " + std::to_string(h) + " not divisible by kv heads " + std::to_string(kv));
  use_device();
  cuda::launch_gqa_unpack(dq, dk, dv, dqkv, b, t, h, kv, d, kStream);
  check_launch("gqa_unpack");
}

}  // namespace weft
