#include "cpu_backend.hpp"
#include "weft/rng.hpp"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include "simd_avx2.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

constexpr size_t kAlignment = 64;
constexpr int64_t kElementGrain = 1 << 15;  // elementwise kernels: elements per chunk
constexpr int64_t kColumnGrain = 16;        // column-partitioned reductions: columns per chunk
constexpr int64_t kSumBlock = 1 << 12;      // sum/sum_squares: elements per fixed block
constexpr int64_t kCopyGrain = 1 << 20;     // copy, zero-fill: bytes per chunk
constexpr size_t kParallelZeroBytes = size_t{4} << 20;  // zero-fill larger blocks on the pool

// Rows per chunk so that a chunk holds roughly kElementGrain elements.
int64_t row_grain(int64_t row_len) { return std::max<int64_t>(1, kElementGrain / std::max<int64_t>(1, row_len)); }

int blas_int(int64_t v, const char* what) {
  WEFT_ASSERT(v >= 0 && v <= std::numeric_limits<int>::max(),
              std::string("gemm: ") + what + " out of BLAS int range: " + std::to_string(v));
  return static_cast<int>(v);
}

// F16C: the CPU's f16 <-> f32 conversions, 8 at a time (round to nearest
// even, the same bits as float_to_f16 / f16_to_float).
__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_float(src[i]);
}

__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = float_to_f16(src[i]);
}

// out[0:n] = the fp32 values at p (one row, on the calling thread).
void widen_row(float* out, TypedPtr p, int64_t n) {
  if (p.dtype == DType::F32) {
    std::memcpy(out, p.data, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  WEFT_ASSERT(p.dtype == DType::BF16 || p.dtype == DType::F16,
              std::string("cpu backend: a kernel input of dtype ") + dtype_name(p.dtype) + " (f32, bf16, f16 only)");
  const uint16_t* src = static_cast<const uint16_t*>(p.data);
  if (p.dtype == DType::BF16)
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_float(src[i]);
}

// The fp32 values of the n elements at p: p itself when they are fp32, else
// widened into `scratch` (exact: every bf16 and f16 value is an fp32 value).
const float* widen(ThreadPool& pool, TypedPtr p, int64_t n, std::vector<float>& scratch, bool f16c) {
  if (p.dtype == DType::F32 || n <= 0) return static_cast<const float*>(p.data);
  WEFT_ASSERT(p.dtype == DType::BF16 || p.dtype == DType::F16,
              std::string("cpu backend: a kernel input of dtype ") + dtype_name(p.dtype) + " (f32, bf16, f16 only)");
  scratch.resize(static_cast<size_t>(n));
  const uint16_t* src = static_cast<const uint16_t*>(p.data);
  float* dst = scratch.data();
  const bool bf16 = p.dtype == DType::BF16;
  pool.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (bf16) {
      for (int64_t i = i0; i < i1; ++i) {  // bf16 is the top half of an fp32
        const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
        std::memcpy(dst + i, &u, sizeof u);
      }
    } else if (f16c) {
      f16_to_f32_f16c(dst + i0, src + i0, i1 - i0);
    } else {
      for (int64_t i = i0; i < i1; ++i) dst[i] = f16_to_float(src[i]);
    }
  });
  return dst;
}

}  // namespace

// ---------------------------------------------------------------------------
// Profile: per-kernel calls, wall time and flops (WEFT_CPU_PROFILE=1)

namespace {

enum Op : int {
  kOpGemmNN, kOpGemmNT, kOpGemmTN, kOpGemmTT, kOpAddBias, kOpBiasGrad, kOpLnFwd, kOpLnBwd, kOpGeluFwd, kOpGeluBwd, kOpAttnFwd, kOpAttnBwd,
  kOpEmbFwd, kOpEmbBwd, kOpXent, kOpAdd, kOpAccumulate, kOpScale, kOpFill, kOpSum, kOpSumSq, kOpAdamW, kOpCast,
  kOpCopy, kOpAlloc, kOpCount
};
constexpr const char* kOpNames[kOpCount] = {
    "gemm A.B", "gemm A.B^T", "gemm A^T.B", "gemm A^T.B^T", "add_bias", "bias_grad", "layernorm_fwd", "layernorm_bwd", "gelu_fwd", "gelu_bwd", "attention_fwd",
    "attention_bwd", "embedding_fwd", "embedding_bwd", "cross_entropy", "add", "accumulate", "scale", "fill", "sum",
    "sum_squares", "adamw", "cast", "copy", "alloc"};

}  // namespace

struct CpuBackend::Profile {
  std::array<std::atomic<int64_t>, kOpCount> calls{}, ns{}, flops{};
};

namespace {

// Adds one call of `op` (and its wall time) to the profile when profiling is on.
class OpTimer {
 public:
  OpTimer(CpuBackend::Profile* p, Op op, double flops = 0) : p_(p), op_(op), flops_(flops) {
    if (p_) t0_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (!p_) return;
    const auto dt = std::chrono::steady_clock::now() - t0_;
    p_->calls[op_].fetch_add(1, std::memory_order_relaxed);
    p_->ns[op_].fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count(), std::memory_order_relaxed);
    p_->flops[op_].fetch_add(static_cast<int64_t>(flops_), std::memory_order_relaxed);
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  CpuBackend::Profile* p_;
  Op op_;
  double flops_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace

// ---------------------------------------------------------------------------
// Memory: accounting by category and a cache of freed blocks

// Blocks this large or larger go back to the cache when freed: smaller ones are
// cheap for malloc, larger ones would be unmapped and page-faulted in again on
// every step.
constexpr size_t kCacheMinBytes = size_t{64} << 10;

struct CpuBackend::Arena {
  mutable std::mutex mutex;
  MemStats stats;
  std::multimap<size_t, void*> free_blocks;  // capacity -> block
  int64_t cached = 0;                        // bytes in free_blocks
  int64_t hits = 0;                          // allocations served from the cache
  int64_t misses = 0;                        // cacheable allocations it could not serve
  int64_t transient_live = 0;                // block bytes behind live activation, workspace, comm tensors
  int64_t transient_peak = 0;                // its high-water mark

  ~Arena() {
    for (auto& [capacity, block] : free_blocks) std::free(block);
  }

  // Counts `bytes` of live tensors of `category` (the accounting) and the
  // `capacity` of the block behind them (what the cache bound compares with:
  // blocks are rounded up and may be taken up to 1/8 larger).
  void add(MemCategory category, int64_t bytes, int64_t capacity) {  // caller holds mutex
    const int i = static_cast<int>(category);
    stats.current[i] += bytes;
    stats.peak[i] = std::max(stats.peak[i], stats.current[i]);
    if (category == MemCategory::Activation || category == MemCategory::Workspace ||
        category == MemCategory::CommBuffer) {
      transient_live += capacity;
      transient_peak = std::max(transient_peak, transient_live);
    }
  }

  // A cached block of at least `capacity` bytes (at most 1/8 larger; its size
  // goes to *got), or null.
  void* take(size_t capacity, size_t* got) {  // caller holds mutex
    if (capacity < kCacheMinBytes) return nullptr;
    auto it = free_blocks.lower_bound(capacity);
    if (it == free_blocks.end() || it->first > capacity + capacity / 8) {
      ++misses;
      return nullptr;
    }
    void* block = it->second;
    *got = it->first;
    cached -= static_cast<int64_t>(it->first);
    free_blocks.erase(it);
    ++hits;
    return block;
  }

  // Keeps the block for reuse while the cache stays within twice the largest
  // transient working set seen so far, frees it otherwise. Twice, because a
  // step needs more distinct blocks than its peak: a request only takes a
  // block of its own size (at most 1/8 larger), and the sizes live at the
  // peak are not all the sizes of the step. With the bound at 1x, blocks were
  // freed at the end of every step and mapped again in the next.
  void give_back(void* block, size_t capacity) {  // caller holds mutex
    if (capacity >= kCacheMinBytes && cached + static_cast<int64_t>(capacity) <= 2 * transient_peak) {
      free_blocks.emplace(capacity, block);
      cached += static_cast<int64_t>(capacity);
    } else {
      std::free(block);
    }
  }
};

CpuBackend::CpuBackend(int threads, bool vector_kernels) : pool_(threads), arena_(std::make_shared<Arena>()) {
  // Every GEMM is cut into panels on our own pool, each computed by a
  // single-threaded OpenBLAS call: no second thread pool spins between calls.
  openblas_set_num_threads(1);
  __builtin_cpu_init();
  avx2_ = vector_kernels && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f16c_ = vector_kernels && __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  const char* prof = std::getenv("WEFT_CPU_PROFILE");
  if (prof && *prof && std::string(prof) != "0") profile_ = std::make_unique<Profile>();
}

CpuBackend::~CpuBackend() {
  if (!profile_) return;
  const Profile& p = *profile_;
  int64_t total_ns = 0;
  for (int i = 0; i < kOpCount; ++i) total_ns += p.ns[i].load();
  std::string out = "weft cpu backend profile (" + std::to_string(pool_.size()) + " threads, " +
                    (avx2_ ? "avx2" : "generic") + " kernels, openblas " + openblas_get_corename() + ")\n";
  char line[160];
  std::snprintf(line, sizeof line, "  %-16s %10s %12s %10s %8s %10s\n", "kernel", "calls", "total ms", "ms/call",
                "share", "GFLOP/s");
  out += line;
  for (int i = 0; i < kOpCount; ++i) {
    const int64_t calls = p.calls[i].load();
    if (calls == 0) continue;
    const double ms = static_cast<double>(p.ns[i].load()) * 1e-6;
    const double flops = static_cast<double>(p.flops[i].load());
    std::snprintf(line, sizeof line, "  %-16s %10lld %12.1f %10.3f %7.1f%% %10.1f\n", kOpNames[i],
                  static_cast<long long>(calls), ms, ms / static_cast<double>(calls),
                  100.0 * static_cast<double>(p.ns[i].load()) / static_cast<double>(std::max<int64_t>(1, total_ns)),
                  flops > 0 ? flops / (ms * 1e6) : 0.0);
    out += line;
  }
  MemStats mem = mem_stats();
  out += "  peak bytes by category:";
  for (int i = 0; i < kMemCategoryCount; ++i)
    out += std::string(" ") + mem_category_name(static_cast<MemCategory>(i)) + " " + std::to_string(mem.peak[i]);
  out += "\n  block cache: " + std::to_string(cached_bytes()) + " bytes held, " + std::to_string(cache_hits()) +
         " allocations served from it, " + std::to_string(cache_misses()) + " fresh blocks of 64 KiB or more\n";
  std::fputs(out.c_str(), stderr);
}

Tensor CpuBackend::alloc(const Shape& shape, DType dtype, MemCategory category) {
  return allocate(shape, dtype, category, true);
}

Tensor CpuBackend::alloc_uninitialized(const Shape& shape, DType dtype, MemCategory category) {
  return allocate(shape, dtype, category, false);
}

Tensor CpuBackend::allocate(const Shape& shape, DType dtype, MemCategory category, bool zero) {
  for (int64_t d : shape) WEFT_ASSERT(d >= 0, "alloc: negative dimension in " + shape_str(shape));
  const int i = static_cast<int>(category);
  WEFT_ASSERT(i >= 0 && i < kMemCategoryCount, "alloc: bad memory category");
  OpTimer timer(profile_.get(), kOpAlloc);
  const int64_t bytes = shape_numel(shape) * static_cast<int64_t>(dtype_size(dtype));
  const size_t want = (static_cast<size_t>(std::max<int64_t>(bytes, 1)) + kAlignment - 1) / kAlignment * kAlignment;
  void* data = nullptr;
  size_t capacity = want;
  {
    std::lock_guard<std::mutex> lock(arena_->mutex);
    data = arena_->take(want, &capacity);
    arena_->add(category, bytes, static_cast<int64_t>(capacity));
  }
  if (!data) data = std::aligned_alloc(kAlignment, capacity);
  if (!data) {
    std::lock_guard<std::mutex> lock(arena_->mutex);
    arena_->add(category, -bytes, -static_cast<int64_t>(capacity));
    throw Error("cpu backend: out of host memory allocating " + std::to_string(bytes) + " bytes of " +
                mem_category_name(category) + " " + shape_str(shape));
  }
  if (!zero) {
    // Nothing to do: the caller overwrites the whole block.
  } else if (capacity >= kParallelZeroBytes) {
    char* bytes_ptr = static_cast<char*>(data);
    pool_.parallel_for(static_cast<int64_t>(capacity), kCopyGrain, [&](int64_t b0, int64_t b1) {
      std::memset(bytes_ptr + b0, 0, static_cast<size_t>(b1 - b0));
    });
  } else {
    std::memset(data, 0, capacity);
  }
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->bytes = static_cast<size_t>(bytes);
  storage->device = Device::Host;
  storage->release = [arena = arena_, category, bytes, capacity](Storage& s) {
    std::lock_guard<std::mutex> lock(arena->mutex);
    arena->add(category, -bytes, -static_cast<int64_t>(capacity));
    arena->give_back(s.data, capacity);
    s.data = nullptr;
  };
  return Tensor(std::move(storage), 0, shape, dtype);
}

MemStats CpuBackend::mem_stats() const {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  return arena_->stats;
}

void CpuBackend::reset_peak() {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  arena_->stats.peak = arena_->stats.current;
}

int64_t CpuBackend::cached_bytes() const {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  return arena_->cached;
}

int64_t CpuBackend::cache_hits() const {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  return arena_->hits;
}

int64_t CpuBackend::cache_misses() const {
  std::lock_guard<std::mutex> lock(arena_->mutex);
  return arena_->misses;
}

void CpuBackend::copy_to_host(void* dst, const Tensor& src) {
  WEFT_ASSERT(src.device() == Device::Host, "cpu backend: copy_to_host from a non-host tensor");
  OpTimer timer(profile_.get(), kOpCopy);
  if (src.bytes() > 0) std::memcpy(dst, src.raw(), src.bytes());
}

void CpuBackend::copy_from_host(const Tensor& dst, const void* src) {
  WEFT_ASSERT(dst.device() == Device::Host, "cpu backend: copy_from_host into a non-host tensor");
  OpTimer timer(profile_.get(), kOpCopy);
  if (dst.bytes() > 0) std::memcpy(dst.raw(), src, dst.bytes());
}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  WEFT_ASSERT(dst.device() == Device::Host && src.device() == Device::Host, "cpu backend: copy of a non-host tensor");
  WEFT_ASSERT(dst.bytes() == src.bytes(), "copy: " + std::to_string(src.bytes()) + " bytes into " +
                                              std::to_string(dst.bytes()));
  OpTimer timer(profile_.get(), kOpCopy);
  const size_t bytes = dst.bytes();
  char* d = static_cast<char*>(dst.raw());
  const char* s = static_cast<const char*>(src.raw());
  if (bytes == 0 || d == s) return;
  if (d + bytes <= s || s + bytes <= d) {  // disjoint: copy in parallel chunks
    pool_.parallel_for(static_cast<int64_t>(bytes), kCopyGrain, [&](int64_t b0, int64_t b1) {
      std::memcpy(d + b0, s + b0, static_cast<size_t>(b1 - b0));
    });
  } else {
    std::memmove(d, s, bytes);  // overlapping views
  }
}

// ---------------------------------------------------------------------------
// GEMM, bias
//
// A GEMM of at least kGemmParallelFlops is cut along the larger of m and n into
// panels (a multiple of the thread count of them, so the pool's threads get equal
// shares); each panel is one single-threaded cblas_sgemm on the pool. Splitting
// the larger side means only the smaller operand is packed once per panel. The
// panels depend only on the shape and the thread count, and every element of C
// is produced by one call over the whole k, so results are deterministic.

namespace {
constexpr double kGemmParallelFlops = 4e6;
constexpr int64_t kPanelAlign = 16;     // panel widths are multiples of this (the sgemm micro-tile)
constexpr int64_t kMinPanelWidth = 256; // below this, per-panel packing starts to show
constexpr int64_t kSplitKRatio = 16;    // k >= this * max(m, n): split k instead
}  // namespace

void CpuBackend::gemm_serial(const Sgemm& g) {
  const int m = blas_int(g.m, "m"), n = blas_int(g.n, "n"), k = blas_int(g.k, "k");
  const int lda = blas_int(g.lda, "lda"), ldb = blas_int(g.ldb, "ldb"), ldc = blas_int(g.ldc, "ldc");
  const CBLAS_TRANSPOSE ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = g.trans_b ? CblasTrans : CblasNoTrans;
  for (int64_t bi = 0; bi < g.batch; ++bi) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, g.alpha, g.a + bi * g.stride_a, lda, g.b + bi * g.stride_b, ldb,
                g.beta, g.c + bi * g.stride_c, ldc);
  }
}

// A long, thin product (k much larger than m and n, like dlogits[N,Vp] @ wte[Vp,C])
// is cut along k instead, one part per thread: part 0 computes
// C = alpha * A0 B0 + beta * C in place, part p > 0 computes alpha * Ap Bp
// into scratch, and the scratch parts are added to C in part order. Each
// thread then packs only its share of both operands.
void CpuBackend::gemm_split_k(const Sgemm& g) {
  const int64_t parts = pool_.size();
  const int64_t width = (g.k + parts - 1) / parts;
  std::lock_guard<std::mutex> lock(scratch_mutex_);
  const size_t need = static_cast<size_t>((parts - 1) * g.m * g.n);
  if (gemm_scratch_.size() < need) gemm_scratch_.resize(need);
  float* scratch = gemm_scratch_.data();
  pool_.parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t k0 = p * width, k1 = std::min(g.k, k0 + width);
      Sgemm s = g;
      s.k = k1 - k0;
      s.a += g.trans_a ? k0 * g.lda : k0;  // op(A) columns k0..
      s.b += g.trans_b ? k0 : k0 * g.ldb;  // op(B) rows k0..
      if (p > 0) {
        s.beta = 0.f;
        s.c = scratch + (p - 1) * g.m * g.n;
        s.ldc = g.n;
      }
      if (s.k > 0) {
        gemm_serial(s);
      } else if (p > 0) {
        std::fill(s.c, s.c + g.m * g.n, 0.f);
      }
    }
  });
  pool_.parallel_for(g.m, row_grain(g.n * parts), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* crow = g.c + r * g.ldc;
      for (int64_t p = 1; p < parts; ++p) {
        const float* srow = scratch + (p - 1) * g.m * g.n + r * g.n;
        for (int64_t j = 0; j < g.n; ++j) crow[j] += srow[j];
      }
    }
  });
}

namespace {
// Elements from the first to the last one a (possibly batched, strided) operand
// of `rows` x `cols` with leading dimension ld reaches.
int64_t operand_extent(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  if (rows == 0 || cols == 0 || batch == 0) return 0;
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}
}  // namespace

// 16-bit inputs are widened to fp32 (exactly) and multiplied by sgemm, so the
// products and their sums are fp32 as the contract says.
void CpuBackend::gemm(const GemmArgs& args) {
  WEFT_ASSERT(args.m >= 0 && args.n >= 0 && args.k >= 0 && args.batch >= 0, "gemm: negative size");
  if (args.m == 0 || args.n == 0 || args.batch == 0) return;
  std::vector<float> wide_a, wide_b;
  Sgemm g;
  g.trans_a = args.trans_a, g.trans_b = args.trans_b;
  g.m = args.m, g.n = args.n, g.k = args.k;
  g.alpha = args.alpha, g.beta = args.beta;
  g.a = widen(pool_, args.a,
              operand_extent(args.trans_a ? args.k : args.m, args.trans_a ? args.m : args.k, args.lda, args.batch,
                             args.stride_a),
              wide_a, f16c_);
  g.b = widen(pool_, args.b,
              operand_extent(args.trans_b ? args.n : args.k, args.trans_b ? args.k : args.n, args.ldb, args.batch,
                             args.stride_b),
              wide_b, f16c_);
  g.lda = args.lda, g.ldb = args.ldb;
  g.c = args.c, g.ldc = args.ldc;
  g.batch = args.batch, g.stride_a = args.stride_a, g.stride_b = args.stride_b, g.stride_c = args.stride_c;
  WEFT_ASSERT(g.ldc >= g.n, "gemm: ldc < n");
  const double flops = 2.0 * static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k) *
                       static_cast<double>(g.batch);
  OpTimer timer(profile_.get(), static_cast<Op>(kOpGemmNN + 2 * g.trans_a + g.trans_b), flops);
  if (g.k == 0) {  // C = beta * C
    for (int64_t bi = 0; bi < g.batch; ++bi) {
      float* c = g.c + bi * g.stride_c;
      for (int64_t i = 0; i < g.m; ++i) {
        float* row = c + i * g.ldc;
        for (int64_t j = 0; j < g.n; ++j) row[j] = g.beta == 0.f ? 0.f : g.beta * row[j];
      }
    }
    return;
  }
  WEFT_ASSERT(g.lda >= (g.trans_a ? g.m : g.k), "gemm: lda too small");
  WEFT_ASSERT(g.ldb >= (g.trans_b ? g.k : g.n), "gemm: ldb too small");
  const int64_t threads = pool_.size();
  if (threads == 1 || flops < kGemmParallelFlops) {
    gemm_serial(g);
    return;
  }
  if (g.batch == 1 && g.k >= kSplitKRatio * std::max(g.m, g.n)) {
    gemm_split_k(g);
    return;
  }
  // Panels along n (columns of C and op(B)) or m (rows of C and op(A)).
  const bool split_n = g.n >= g.m;
  const int64_t dim = split_n ? g.n : g.m;
  const int64_t per_thread = dim >= 2 * threads * kMinPanelWidth ? 2 : 1;
  int64_t width = (dim + threads * per_thread - 1) / (threads * per_thread);
  width = (width + kPanelAlign - 1) / kPanelAlign * kPanelAlign;
  const int64_t panels = (dim + width - 1) / width;
  pool_.parallel_for(g.batch * panels, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t bi = t / panels, p0 = (t % panels) * width, p1 = std::min(dim, p0 + width);
      Sgemm s = g;
      s.batch = 1;
      s.a = g.a + bi * g.stride_a;
      s.b = g.b + bi * g.stride_b;
      s.c = g.c + bi * g.stride_c;
      if (split_n) {
        s.n = p1 - p0;
        s.b += g.trans_b ? p0 * g.ldb : p0;  // op(B) columns p0.. = rows of B when transposed
        s.c += p0;
      } else {
        s.m = p1 - p0;
        s.a += g.trans_a ? p0 : p0 * g.lda;  // op(A) rows p0.. = columns of A when transposed
        s.c += p0 * g.ldc;
      }
      gemm_serial(s);
    }
  });
}

// Inline kernel bodies below are compiled twice, for AVX2 (WEFT_AVX2, no FMA, so
// no contraction) and for the baseline ISA: both give the same bits.
#define WEFT_INLINE inline __attribute__((always_inline))
#define WEFT_DISPATCH(name, params, args)       \
  WEFT_AVX2 void name##_avx2 params { name args; } \
  void name##_generic params { name args; }

namespace {

// out[r0:r1, :] += bias
WEFT_INLINE void add_bias_rows(float* out, const float* bias, int64_t r0, int64_t r1, int64_t o) {
  for (int64_t r = r0; r < r1; ++r) {
    float* row = out + r * o;
    for (int64_t j = 0; j < o; ++j) row[j] += bias[j];
  }
}
WEFT_DISPATCH(add_bias_rows, (float* out, const float* bias, int64_t r0, int64_t r1, int64_t o),
              (out, bias, r0, r1, o))

// dbias[j0:j1] += column sums of dout[N, O] over rows in order, in double (acc: j1 - j0 doubles).
WEFT_INLINE void bias_grad_cols(float* dbias, const float* dout, double* acc, int64_t n, int64_t o, int64_t j0,
                                int64_t j1) {
  const int64_t w = j1 - j0;
  for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    const float* row = dout + r * o + j0;
    for (int64_t j = 0; j < w; ++j) acc[j] += row[j];
  }
  for (int64_t j = 0; j < w; ++j) dbias[j0 + j] += static_cast<float>(acc[j]);
}
WEFT_DISPATCH(bias_grad_cols,
              (float* dbias, const float* dout, double* acc, int64_t n, int64_t o, int64_t j0, int64_t j1),
              (dbias, dout, acc, n, o, j0, j1))

// Row sums in double with four interleaved partial sums combined in a fixed
// order (a latency-bound single chain would be 4x slower).
WEFT_INLINE double row_sum(const float* x, int64_t c) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= c; j += 4)
    for (int u = 0; u < 4; ++u) s[u] += x[j + u];
  for (; j < c; ++j) s[0] += x[j];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

WEFT_INLINE void layernorm_forward_rows(float* out, float* mean, float* rstd, const float* x, const float* w,
                                        const float* b, int64_t r0, int64_t r1, int64_t c, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * c;
    const double mu = row_sum(xr, c) / static_cast<double>(c);
    double ss[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t j = 0;
    for (; j + 4 <= c; j += 4)
      for (int u = 0; u < 4; ++u) {
        const double d = xr[j + u] - mu;
        ss[u] += d * d;
      }
    for (; j < c; ++j) {
      const double d = xr[j] - mu;
      ss[0] += d * d;
    }
    const double var = ((ss[0] + ss[1]) + (ss[2] + ss[3])) / static_cast<double>(c);
    const float m = static_cast<float>(mu);
    const float rs = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
    float* orow = out + r * c;
    for (int64_t jj = 0; jj < c; ++jj) orow[jj] = (xr[jj] - m) * rs * w[jj] + b[jj];
    mean[r] = m;
    rstd[r] = rs;
  }
}
WEFT_DISPATCH(layernorm_forward_rows,
              (float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t r0,
               int64_t r1, int64_t c, float eps),
              (out, mean, rstd, x, w, b, r0, r1, c, eps))

// dx rows [r0, r1): dx += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w.
// tmp: 2c floats of scratch (g and xhat of the row).
WEFT_INLINE void layernorm_backward_rows(float* dx, const float* dout, const float* x, const float* w,
                                         const float* mean, const float* rstd, float* tmp, int64_t r0, int64_t r1,
                                         int64_t c) {
  float* g = tmp;
  float* xh = tmp + c;
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * c;
    const float* dr = dout + r * c;
    const float m = mean[r], rs = rstd[r];
    for (int64_t j = 0; j < c; ++j) {
      xh[j] = (xr[j] - m) * rs;
      g[j] = dr[j] * w[j];
    }
    double sg[4] = {0.0, 0.0, 0.0, 0.0}, sgx[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t j = 0;
    for (; j + 4 <= c; j += 4)
      for (int u = 0; u < 4; ++u) {
        sg[u] += g[j + u];
        sgx[u] += static_cast<double>(g[j + u]) * xh[j + u];
      }
    for (; j < c; ++j) {
      sg[0] += g[j];
      sgx[0] += static_cast<double>(g[j]) * xh[j];
    }
    const float mean_g = static_cast<float>(((sg[0] + sg[1]) + (sg[2] + sg[3])) / static_cast<double>(c));
    const float mean_gx = static_cast<float>(((sgx[0] + sgx[1]) + (sgx[2] + sgx[3])) / static_cast<double>(c));
    float* dxr = dx + r * c;
    for (int64_t jj = 0; jj < c; ++jj) dxr[jj] += rs * (g[jj] - mean_g - xh[jj] * mean_gx);
  }
}
WEFT_DISPATCH(layernorm_backward_rows,
              (float* dx, const float* dout, const float* x, const float* w, const float* mean, const float* rstd,
               float* tmp, int64_t r0, int64_t r1, int64_t c),
              (dx, dout, x, w, mean, rstd, tmp, r0, r1, c))

// dw[j0:j1] += sum_r dout * xhat, db[j0:j1] += sum_r dout, rows in order, in double
// (acc: 2 (j1 - j0) doubles).
WEFT_INLINE void layernorm_param_grad_cols(float* dw, float* db, const float* dout, const float* x,
                                           const float* mean, const float* rstd, double* acc, int64_t n, int64_t c,
                                           int64_t j0, int64_t j1) {
  const int64_t w = j1 - j0;
  double* aw = acc;
  double* ab = acc + w;
  for (int64_t j = 0; j < 2 * w; ++j) acc[j] = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * c + j0;
    const float* dr = dout + r * c + j0;
    const float m = mean[r], rs = rstd[r];
    for (int64_t j = 0; j < w; ++j) {
      const float xhat = (xr[j] - m) * rs;
      aw[j] += static_cast<double>(dr[j]) * xhat;
      ab[j] += dr[j];
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    dw[j0 + j] += static_cast<float>(aw[j]);
    db[j0 + j] += static_cast<float>(ab[j]);
  }
}
WEFT_DISPATCH(layernorm_param_grad_cols,
              (float* dw, float* db, const float* dout, const float* x, const float* mean, const float* rstd,
               double* acc, int64_t n, int64_t c, int64_t j0, int64_t j1),
              (dw, db, dout, x, mean, rstd, acc, n, c, j0, j1))

}  // namespace

void CpuBackend::add_bias(float* out, TypedPtr bias_in, int64_t n, int64_t o) {
  OpTimer timer(profile_.get(), kOpAddBias);
  std::vector<float> wide;
  const float* bias = widen(pool_, bias_in, o, wide, f16c_);
  pool_.parallel_for(n, row_grain(o), [&](int64_t r0, int64_t r1) {
    if (avx2_) return add_bias_rows_avx2(out, bias, r0, r1, o);
    add_bias_rows_generic(out, bias, r0, r1, o);
  });
}

void CpuBackend::bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) {
  OpTimer timer(profile_.get(), kOpBiasGrad);
  // Partitioned over columns; each column sums its rows in order (in double).
  pool_.parallel_for(o, kColumnGrain, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(j1 - j0);
    if (avx2_) return bias_grad_cols_avx2(dbias, dout, acc.data(), n, o, j0, j1);
    bias_grad_cols_generic(dbias, dout, acc.data(), n, o, j0, j1);
  });
}

// ---------------------------------------------------------------------------
// LayerNorm, GeLU

void CpuBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* x, TypedPtr w_in,
                                   TypedPtr b_in, int64_t n, int64_t c, float eps) {
  OpTimer timer(profile_.get(), kOpLnFwd);
  std::vector<float> wide_w, wide_b;
  const float* w = widen(pool_, w_in, c, wide_w, f16c_);
  const float* b = widen(pool_, b_in, c, wide_b, f16c_);
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    if (avx2_) return layernorm_forward_rows_avx2(out, mean, rstd, x, w, b, r0, r1, c, eps);
    layernorm_forward_rows_generic(out, mean, rstd, x, w, b, r0, r1, c, eps);
  });
}

void CpuBackend::layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                                    TypedPtr w_in, const float* mean, const float* rstd, int64_t n, int64_t c) {
  OpTimer timer(profile_.get(), kOpLnBwd);
  std::vector<float> wide_w;
  const float* w = widen(pool_, w_in, c, wide_w, f16c_);
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp(2 * c);
    if (avx2_) return layernorm_backward_rows_avx2(dx, dout, x, w, mean, rstd, tmp.data(), r0, r1, c);
    layernorm_backward_rows_generic(dx, dout, x, w, mean, rstd, tmp.data(), r0, r1, c);
  });
  // dw, db: partitioned over columns, rows summed in order (in double).
  pool_.parallel_for(c, kColumnGrain, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(2 * (j1 - j0));
    if (avx2_) return layernorm_param_grad_cols_avx2(dw, db, dout, x, mean, rstd, acc.data(), n, c, j0, j1);
    layernorm_param_grad_cols_generic(dw, db, dout, x, mean, rstd, acc.data(), n, c, j0, j1);
  });
}

// GeLU (tanh form) through the logistic function, which needs one exp and has
// no cancellation in 1 + tanh for large negative inputs:
//   u = a (x + b x^3),  s = (1 + tanh u) / 2 = 1 / (1 + e^{-2u}),
//   gelu(x) = x s,  gelu'(x) = s + 2 x s (1 - s) a (1 + 3 b x^2).
namespace {
constexpr float kGeluA = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluB = 0.044715f;

inline float gelu_s(float v) { return 1.f / (1.f + std::exp(-2.f * (kGeluA * (v + kGeluB * v * v * v)))); }

WEFT_AVX2_FMA inline __m256 gelu_s8(__m256 v) {
  const __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
  const __m256 u = _mm256_mul_ps(_mm256_set1_ps(kGeluA), _mm256_fmadd_ps(_mm256_set1_ps(kGeluB), v3, v));
  const __m256 z = simd::exp256(_mm256_mul_ps(_mm256_set1_ps(-2.f), u));
  return _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), z));
}

WEFT_AVX2_FMA inline __m256 gelu_grad8(__m256 v) {
  const __m256 s = gelu_s8(v);
  const __m256 du = _mm256_mul_ps(_mm256_set1_ps(kGeluA),
                                  _mm256_fmadd_ps(_mm256_set1_ps(3.f * kGeluB), _mm256_mul_ps(v, v), _mm256_set1_ps(1.f)));
  const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(v, v), s), _mm256_sub_ps(_mm256_set1_ps(1.f), s));
  return _mm256_fmadd_ps(t, du, s);
}

// The last n % 8 elements go through the same vector code (masked), so an
// element's result does not depend on where a chunk boundary falls.
WEFT_AVX2_FMA void gelu_forward_avx2(float* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, gelu_s8(v)));
  }
  if (i < n) {
    const __m256i mask = simd::tail_mask(n - i);
    const __m256 v = _mm256_maskload_ps(x + i, mask);
    _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(v, gelu_s8(v)));
  }
}

WEFT_AVX2_FMA void gelu_backward_avx2(float* dx, const float* x, const float* dout, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = gelu_grad8(_mm256_loadu_ps(x + i));
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(g, _mm256_loadu_ps(dout + i)));
  }
  if (i < n) {
    const __m256i mask = simd::tail_mask(n - i);
    const __m256 g = gelu_grad8(_mm256_maskload_ps(x + i, mask));
    _mm256_maskstore_ps(dx + i, mask, _mm256_mul_ps(g, _mm256_maskload_ps(dout + i, mask)));
  }
}

}  // namespace

void CpuBackend::gelu_forward(float* out, const float* x, int64_t n) {
  OpTimer timer(profile_.get(), kOpGeluFwd);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (avx2_) return gelu_forward_avx2(out + i0, x + i0, i1 - i0);
    for (int64_t i = i0; i < i1; ++i) out[i] = x[i] * gelu_s(x[i]);
  });
}

void CpuBackend::gelu_backward(float* dx, const float* x, const float* dout, int64_t n) {
  OpTimer timer(profile_.get(), kOpGeluBwd);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (avx2_) return gelu_backward_avx2(dx + i0, x + i0, dout + i0, i1 - i0);
    for (int64_t i = i0; i < i1; ++i) {
      const float v = x[i], s = gelu_s(v);
      const float du = kGeluA * (1.f + 3.f * kGeluB * v * v);
      dx[i] = (s + 2.f * v * s * (1.f - s) * du) * dout[i];
    }
  });
}

// ---------------------------------------------------------------------------
// Causal attention
//
// Forward: one task is one (batch, head) pair and one tile of kAttnTileQ query
// rows. It streams key tiles of kAttnTileK keys up to the diagonal with an
// online softmax (running max m, running sum l, rescaled accumulator), so no
// more than one [TQ, TK] score tile exists per task.
// Backward: one task is one (batch, head) pair. It walks the query tiles in
// order and, inside each, the key tiles up to the diagonal, recomputing the
// probabilities once from the saved lse into a [TQ, TK] tile with the score
// gradients beside it; then dQ rows of the tile take the key tile's weighted
// sum, and dK, dV rows (task-local [T, hs] buffers for all keys of the pair)
// the query tile's, each row summed in registers over the tile and added once.
// Every element of dqkv is written by exactly one task, with no atomics.
// The task bodies are inline templates compiled twice, for AVX2 and for the
// baseline ISA. The AVX2 build calls AVX2 + FMA helpers for the three inner
// pieces (a row of scores, its exponentials, weighted sums of rows); the
// baseline does the same in plain loops with std::exp.

namespace {

struct AttnShape {
  int64_t b, t, c, h, hs;
  float scale;
  AttentionMask mask;  // document starts and probability dropout (weft/backend.hpp)
  // Keys j < first_key(bi, i) are masked for query i (its document's start).
  int64_t first_key(int64_t bi, int64_t i) const { return mask.doc_start ? mask.doc_start[bi * t + i] : 0; }
  // 1 / (1 - p) where the probability (bi, hi, i, j) is kept, 0 where dropped; 1 without dropout.
  float keep(int64_t bi, int64_t hi, int64_t i, int64_t j) const {
    if (!(mask.dropout > 0.f)) return 1.f;
    const uint64_t index = static_cast<uint64_t>(((mask.first_head + hi) * t + i) * t + j);
    return dropout_keep(mask.dropout_key, static_cast<uint64_t>(mask.first_sample + bi), index, mask.dropout)
               ? 1.f / (1.f - mask.dropout)
               : 0.f;
  }
  int64_t row() const { return 3 * c; }  // qkv row stride
  const float* q(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const {
    return qkv + (bi * t + ti) * row() + hi * hs;
  }
  const float* k(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const { return q(qkv, bi, ti, hi) + c; }
  const float* v(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const { return q(qkv, bi, ti, hi) + 2 * c; }
};

AttnShape attn_shape(int64_t b, int64_t t, int64_t c, int64_t h, const AttentionMask& mask) {
  WEFT_ASSERT(b >= 0 && t >= 0 && c > 0 && h > 0 && c % h == 0,
              "attention: channels " + std::to_string(c) + " not divisible by heads " + std::to_string(h));
  WEFT_ASSERT(mask.dropout >= 0.f && mask.dropout < 1.f, "attention: dropout must be in [0, 1)");
  const int64_t hs = c / h;
  return AttnShape{b, t, c, h, hs, static_cast<float>(1.0 / std::sqrt(static_cast<double>(hs))), mask};
}

// s[j] = e^(s[j] - shift) for j < n; returns the sum of the results in double.
WEFT_AVX2_FMA double exp_shifted_avx2(float* s, int64_t n, float shift) {
  const __m256 vs = _mm256_set1_ps(shift);
  __m256d acc = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vs));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_pd(acc, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(e)),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1))));
  }
  double sum = simd::hsum(acc);
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - shift);
    sum += s[j];
  }
  return sum;
}

template <bool kAvx2>
WEFT_INLINE double exp_shifted(float* s, int64_t n, float shift) {
  if constexpr (kAvx2) {
    return exp_shifted_avx2(s, n, shift);
  } else {
    double sum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      s[j] = std::exp(s[j] - shift);
      sum += s[j];
    }
    return sum;
  }
}

// out[0:hs] += sum over r < nr of w[r * ws] * x[r * xs + 0:hs], r in increasing
// order for every element. AVX2 + FMA: blocks of 32 columns held in four
// registers across all r, so out is loaded and stored once per call.
WEFT_AVX2_FMA void add_weighted_rows_avx2(float* __restrict out, const float* __restrict w, int64_t ws,
                                          const float* __restrict x, int64_t xs, int64_t nr, int64_t hs) {
  int64_t d = 0;
  for (; d + 32 <= hs; d += 32) {
    __m256 a0 = _mm256_loadu_ps(out + d), a1 = _mm256_loadu_ps(out + d + 8);
    __m256 a2 = _mm256_loadu_ps(out + d + 16), a3 = _mm256_loadu_ps(out + d + 24);
    for (int64_t r = 0; r < nr; ++r) {
      const __m256 wr = _mm256_set1_ps(w[r * ws]);
      const float* xr = x + r * xs + d;
      a0 = _mm256_fmadd_ps(wr, _mm256_loadu_ps(xr), a0);
      a1 = _mm256_fmadd_ps(wr, _mm256_loadu_ps(xr + 8), a1);
      a2 = _mm256_fmadd_ps(wr, _mm256_loadu_ps(xr + 16), a2);
      a3 = _mm256_fmadd_ps(wr, _mm256_loadu_ps(xr + 24), a3);
    }
    _mm256_storeu_ps(out + d, a0);
    _mm256_storeu_ps(out + d + 8, a1);
    _mm256_storeu_ps(out + d + 16, a2);
    _mm256_storeu_ps(out + d + 24, a3);
  }
  for (; d + 8 <= hs; d += 8) {
    __m256 a = _mm256_loadu_ps(out + d);
    for (int64_t r = 0; r < nr; ++r) a = _mm256_fmadd_ps(_mm256_set1_ps(w[r * ws]), _mm256_loadu_ps(x + r * xs + d), a);
    _mm256_storeu_ps(out + d, a);
  }
  for (; d < hs; ++d) {
    float a = out[d];
    for (int64_t r = 0; r < nr; ++r) a = std::fma(w[r * ws], x[r * xs + d], a);
    out[d] = a;
  }
}

template <bool kAvx2>
WEFT_INLINE void add_weighted_rows(float* __restrict out, const float* __restrict w, int64_t ws,
                                   const float* __restrict x, int64_t xs, int64_t nr, int64_t hs) {
  if constexpr (kAvx2) {
    add_weighted_rows_avx2(out, w, ws, x, xs, nr, hs);
  } else {
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t d = 0; d < hs; ++d) out[d] += w[r * ws] * x[r * xs + d];
  }
}

// Loads rows [j0, j0+nk) of K (or V) for one head transposed into dst[hs][TK].
WEFT_INLINE void load_transposed(float* dst, const float* first_row, int64_t row_stride, int64_t nk, int64_t hs) {
  constexpr int64_t tk = CpuBackend::kAttnTileK;
  for (int64_t jj = 0; jj < nk; ++jj) {
    const float* src = first_row + jj * row_stride;
    for (int64_t d = 0; d < hs; ++d) dst[d * tk + jj] = src[d];
  }
}

// AVX2 + FMA: all 32 columns of a key tile at once (four registers across
// the whole d loop); columns past the valid ones are computed and ignored.
static_assert(CpuBackend::kAttnTileK == 32, "scores_row_avx2 holds one key tile in four registers");
WEFT_AVX2_FMA void scores_row_avx2(float* __restrict s, const float* __restrict q, const float* __restrict kt,
                                   int64_t hs, float scale) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  for (int64_t d = 0; d < hs; ++d) {
    const __m256 qd = _mm256_set1_ps(q[d]);
    const float* kd = kt + d * 32;
    a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd), a0);
    a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 8), a1);
    a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 16), a2);
    a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kd + 24), a3);
  }
  const __m256 sc = _mm256_set1_ps(scale);
  _mm256_storeu_ps(s, _mm256_mul_ps(a0, sc));
  _mm256_storeu_ps(s + 8, _mm256_mul_ps(a1, sc));
  _mm256_storeu_ps(s + 16, _mm256_mul_ps(a2, sc));
  _mm256_storeu_ps(s + 24, _mm256_mul_ps(a3, sc));
}

// s[jj] = scale * dot(q, key jj) for jj < nvalid, with the keys transposed in kt[hs][TK]
// (s has TK entries; the AVX2 build fills all of them).
template <bool kAvx2>
WEFT_INLINE void scores_row(float* __restrict s, const float* __restrict q, const float* __restrict kt,
                            int64_t nvalid, int64_t hs, float scale) {
  if constexpr (kAvx2) {
    scores_row_avx2(s, q, kt, hs, scale);
    return;
  }
  constexpr int64_t tk = CpuBackend::kAttnTileK;
  for (int64_t jj = 0; jj < nvalid; ++jj) s[jj] = 0.f;
  for (int64_t d = 0; d < hs; ++d) {
    const float qd = q[d];
    const float* kd = kt + d * tk;
    for (int64_t jj = 0; jj < nvalid; ++jj) s[jj] += qd * kd[jj];
  }
  for (int64_t jj = 0; jj < nvalid; ++jj) s[jj] *= scale;
}

// Forward tasks [task0, task1): task = (b*h + hi) * nq + query tile.
template <bool kAvx2>
WEFT_INLINE void attn_forward_tasks(const AttnShape& a, float* out, float* lse, const float* qkv, int64_t task0,
                                    int64_t task1) {
  const int64_t hs = a.hs, t = a.t, c = a.c, h = a.h;
  constexpr int64_t TQ = CpuBackend::kAttnTileQ, TK = CpuBackend::kAttnTileK;
  const int64_t nq = (t + TQ - 1) / TQ;
  std::vector<float> kt(hs * TK), s(TK), acc(TQ * hs);
  std::vector<float> m(TQ);
  std::vector<double> l(TQ);
  for (int64_t task = task0; task < task1; ++task) {
    const int64_t bh = task / nq, bi = bh / h, hi = bh % h;
    const int64_t i0 = (task % nq) * TQ, i1 = std::min(t, i0 + TQ);
    std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
    std::fill(l.begin(), l.end(), 0.0);
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t j0 = 0; j0 < i1; j0 += TK) {  // key tiles up to the diagonal
      const int64_t j1 = std::min(i1, j0 + TK);
      load_transposed(kt.data(), a.k(qkv, bi, j0, hi), a.row(), j1 - j0, hs);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t nvalid = std::min(j1, i + 1) - j0;  // causal: keys j <= i
        // Document mask: the tile's first `off` keys belong to earlier documents.
        const int64_t off = std::max<int64_t>(0, a.first_key(bi, i) - j0);
        if (nvalid - off <= 0) continue;
        const int64_t ii = i - i0, n = nvalid - off;
        scores_row<kAvx2>(s.data(), a.q(qkv, bi, i, hi), kt.data(), nvalid, hs, a.scale);
        float* sv = s.data() + off;  // the visible keys j0 + off .. j0 + nvalid - 1
        float mx = m[ii];
        for (int64_t jj = 0; jj < n; ++jj) mx = std::max(mx, sv[jj]);
        const float corr = std::exp(m[ii] - mx);  // 0 on the first tile (m = -inf)
        const double psum = exp_shifted<kAvx2>(sv, n, mx);
        l[ii] = l[ii] * corr + psum;  // the softmax normalises before dropout
        m[ii] = mx;
        if (a.mask.dropout > 0.f)
          for (int64_t jj = 0; jj < n; ++jj) sv[jj] *= a.keep(bi, hi, i, j0 + off + jj);
        float* accr = acc.data() + ii * hs;
        for (int64_t d = 0; d < hs; ++d) accr[d] *= corr;
        add_weighted_rows<kAvx2>(accr, sv, 1, a.v(qkv, bi, j0 + off, hi), a.row(), n, hs);
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ii = i - i0;
      const float inv = static_cast<float>(1.0 / l[ii]);
      float* orow = out + (bi * t + i) * c + hi * hs;
      const float* accr = acc.data() + ii * hs;
      for (int64_t d = 0; d < hs; ++d) orow[d] = accr[d] * inv;
      lse[bh * t + i] = static_cast<float>(static_cast<double>(m[ii]) + std::log(l[ii]));
    }
  }
}

// Backward tasks [task0, task1): task = b*h + hi. dsum[b,h,i] = dot(dout_i, out_i).
template <bool kAvx2>
WEFT_INLINE void attn_backward_tasks(const AttnShape& a, float* dqkv, const float* dout, const float* qkv,
                                     const float* lse, const float* dsum, int64_t task0, int64_t task1) {
  const int64_t hs = a.hs, t = a.t, c = a.c, h = a.h, row = a.row();
  const float scale = a.scale;
  constexpr int64_t TQ = CpuBackend::kAttnTileQ, TK = CpuBackend::kAttnTileK;
  // pt, gt [TQ, TK]: the tile's probabilities and scale * dS.
  std::vector<float> kt(hs * TK), vt(hs * TK), pt(TQ * TK), gt(TQ * TK), dq(TQ * hs), dk(t * hs), dv(t * hs);
  for (int64_t bh = task0; bh < task1; ++bh) {
    const int64_t bi = bh / h, hi = bh % h;
    std::fill(dk.begin(), dk.end(), 0.f);
    std::fill(dv.begin(), dv.end(), 0.f);
    for (int64_t i0 = 0; i0 < t; i0 += TQ) {
      const int64_t i1 = std::min(t, i0 + TQ);
      std::fill(dq.begin(), dq.end(), 0.f);
      for (int64_t j0 = 0; j0 < i1; j0 += TK) {
        const int64_t j1 = std::min(i1, j0 + TK);
        load_transposed(kt.data(), a.k(qkv, bi, j0, hi), row, j1 - j0, hs);
        load_transposed(vt.data(), a.v(qkv, bi, j0, hi), row, j1 - j0, hs);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t nvalid = std::min(j1, i + 1) - j0;  // causal: keys j <= i
          if (nvalid <= 0) continue;
          const int64_t off = std::min(nvalid, std::max<int64_t>(0, a.first_key(bi, i) - j0));  // masked keys
          // p = softmax probabilities from the saved lse; ds = p * (dp - dsum), dp = dout_i . v_j.
          const float* qi = a.q(qkv, bi, i, hi);
          const float* doi = dout + (bi * t + i) * c + hi * hs;
          float* pr = pt.data() + (i - i0) * TK;
          float* gr = gt.data() + (i - i0) * TK;
          scores_row<kAvx2>(pr, qi, kt.data(), nvalid, hs, scale);
          exp_shifted<kAvx2>(pr, nvalid, lse[bh * t + i]);
          scores_row<kAvx2>(gr, doi, vt.data(), nvalid, hs, 1.f);
          const float di = dsum[bh * t + i];
          if (a.mask.dropout > 0.f) {
            // out = sum of P' v with P' = keep * P: dV takes P', dP = keep * dP'.
            for (int64_t jj = off; jj < nvalid; ++jj) {
              const float kp = a.keep(bi, hi, i, j0 + jj);
              gr[jj] = pr[jj] * (kp * gr[jj] - di) * scale;
              pr[jj] *= kp;
            }
          } else {
            for (int64_t jj = off; jj < nvalid; ++jj) gr[jj] = pr[jj] * (gr[jj] - di) * scale;
          }
          for (int64_t jj = 0; jj < off; ++jj) pr[jj] = gr[jj] = 0.f;  // keys of earlier documents
          // dQ_i += sum over the tile's keys of g_ij K_j
          add_weighted_rows<kAvx2>(dq.data() + (i - i0) * hs, gr, 1, a.k(qkv, bi, j0, hi), row, nvalid, hs);
        }
        // dK_j += sum of g_ij Q_i and dV_j += sum of p_ij dO_i over the tile's rows i >= j.
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t first = std::max(i0, j);
          if (first >= i1) continue;
          const int64_t at = (first - i0) * TK + (j - j0);
          add_weighted_rows<kAvx2>(dk.data() + j * hs, gt.data() + at, TK, a.q(qkv, bi, first, hi), row, i1 - first,
                                   hs);
          add_weighted_rows<kAvx2>(dv.data() + j * hs, pt.data() + at, TK, dout + (bi * t + first) * c + hi * hs, c,
                                   i1 - first, hs);
        }
      }
      for (int64_t i = i0; i < i1; ++i)
        std::memcpy(dqkv + (bi * t + i) * row + hi * hs, dq.data() + (i - i0) * hs, hs * sizeof(float));
    }
    for (int64_t j = 0; j < t; ++j) {
      float* base = dqkv + (bi * t + j) * row + hi * hs;
      std::memcpy(base + c, dk.data() + j * hs, hs * sizeof(float));
      std::memcpy(base + 2 * c, dv.data() + j * hs, hs * sizeof(float));
    }
  }
}

WEFT_AVX2 void attn_forward_tasks_avx2(const AttnShape& a, float* out, float* lse, const float* qkv, int64_t t0,
                                       int64_t t1) {
  attn_forward_tasks<true>(a, out, lse, qkv, t0, t1);
}
void attn_forward_tasks_generic(const AttnShape& a, float* out, float* lse, const float* qkv, int64_t t0, int64_t t1) {
  attn_forward_tasks<false>(a, out, lse, qkv, t0, t1);
}
WEFT_AVX2 void attn_backward_tasks_avx2(const AttnShape& a, float* dqkv, const float* dout, const float* qkv,
                                        const float* lse, const float* dsum, int64_t t0, int64_t t1) {
  attn_backward_tasks<true>(a, dqkv, dout, qkv, lse, dsum, t0, t1);
}
void attn_backward_tasks_generic(const AttnShape& a, float* dqkv, const float* dout, const float* qkv,
                                 const float* lse, const float* dsum, int64_t t0, int64_t t1) {
  attn_backward_tasks<false>(a, dqkv, dout, qkv, lse, dsum, t0, t1);
}

}  // namespace

void CpuBackend::attention_forward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t c,
                                   int64_t h, const AttentionMask& mask) {
  OpTimer timer(profile_.get(), kOpAttnFwd);
  const AttnShape a = attn_shape(b, t, c, h, mask);
  const int64_t nq = (t + kAttnTileQ - 1) / kAttnTileQ;
  pool_.parallel_for(b * h * nq, 1, [&](int64_t task0, int64_t task1) {
    if (avx2_) return attn_forward_tasks_avx2(a, out, lse, qkv, task0, task1);
    attn_forward_tasks_generic(a, out, lse, qkv, task0, task1);
  });
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                                    const float* lse, int64_t b, int64_t t, int64_t c, int64_t h,
                                    const AttentionMask& mask) {
  OpTimer timer(profile_.get(), kOpAttnBwd);
  const AttnShape a = attn_shape(b, t, c, h, mask);
  const int64_t hs = a.hs;
  // dsum[b,h,i] = dot(dout_i, out_i) per head: the softmax backward term.
  std::vector<float> dsum(static_cast<size_t>(b * h * t));
  pool_.parallel_for(b * t, row_grain(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bi = r / t, i = r % t;
      for (int64_t hi = 0; hi < h; ++hi) {
        const float* dor = dout + r * c + hi * hs;
        const float* orow = out + r * c + hi * hs;
        double acc = 0.0;
        for (int64_t d = 0; d < hs; ++d) acc += static_cast<double>(dor[d]) * orow[d];
        dsum[(bi * h + hi) * t + i] = static_cast<float>(acc);
      }
    }
  });
  pool_.parallel_for(b * h, 1, [&](int64_t task0, int64_t task1) {
    if (avx2_) return attn_backward_tasks_avx2(a, dqkv, dout, qkv, lse, dsum.data(), task0, task1);
    attn_backward_tasks_generic(a, dqkv, dout, qkv, lse, dsum.data(), task0, task1);
  });
}

// ---------------------------------------------------------------------------
// Embedding, cross-entropy

void CpuBackend::embedding_forward(float* out, const int32_t* ids, TypedPtr table, int64_t n, int64_t c,
                                   int64_t first, int64_t rows) {
  OpTimer timer(profile_.get(), kOpEmbFwd);
  const size_t es = dtype_size(table.dtype);
  const char* base = static_cast<const char*>(table.data);
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      WEFT_ASSERT(ids[r] >= 0, "embedding: negative id " + std::to_string(ids[r]));
      const int64_t row = static_cast<int64_t>(ids[r]) - first;
      if (row >= 0 && row < rows)
        widen_row(out + r * c, TypedPtr(base + row * c * es, table.dtype), c);
      else
        std::fill(out + r * c, out + (r + 1) * c, 0.f);  // another shard's row
    }
  });
}

void CpuBackend::embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                                    int64_t first, int64_t rows) {
  OpTimer timer(profile_.get(), kOpEmbBwd);
  // Partitioned over columns: each task owns a column range of every table row
  // and adds the rows of dout in order, so repeated ids never race.
  for (int64_t r = 0; r < n; ++r) WEFT_ASSERT(ids[r] >= 0, "embedding: negative id " + std::to_string(ids[r]));
  pool_.parallel_for(c, kColumnGrain, [&](int64_t j0, int64_t j1) {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = static_cast<int64_t>(ids[r]) - first;
      if (row < 0 || row >= rows) continue;
      float* dst = dtable + row * c;
      const float* src = dout + r * c;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  });
}

namespace {

// One row of the fused softmax cross-entropy, AVX2: the max, then e^(x - max)
// (stored in dr when there is a gradient) summed in double (8 floats widened
// per step, two accumulators), then dr scaled to dloss_scale * softmax in
// place while it is still in cache. Returns the loss. dr may alias lr:
// lr[target] is read first.
WEFT_AVX2_FMA float xent_row_avx2(float* dr, const float* lr, int32_t target, int64_t v, int64_t vp, float scale) {
  const float x_target = lr[target];
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= v; j += 8) vmax = _mm256_max_ps(_mm256_loadu_ps(lr + j), vmax);
  float mx = simd::hmax(vmax);
  for (; j < v; ++j) mx = std::max(mx, lr[j]);
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  for (j = 0; j + 8 <= v; j += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(lr + j), vmx));
    if (dr) _mm256_storeu_ps(dr + j, e);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  double s = simd::hsum(s0) + simd::hsum(s1);
  for (; j < v; ++j) {
    const float e = std::exp(lr[j] - mx);
    if (dr) dr[j] = e;
    s += static_cast<double>(e);
  }
  const double log_z = static_cast<double>(mx) + std::log(s);
  const float loss = static_cast<float>(log_z - static_cast<double>(x_target));
  if (dr) {
    const float k = static_cast<float>(static_cast<double>(scale) / s);  // dloss_scale / sum
    const __m256 vk = _mm256_set1_ps(k);
    for (j = 0; j + 8 <= v; j += 8) _mm256_storeu_ps(dr + j, _mm256_mul_ps(vk, _mm256_loadu_ps(dr + j)));
    for (; j < v; ++j) dr[j] *= k;
    dr[target] -= scale;
    std::fill(dr + v, dr + vp, 0.f);
  }
  return loss;
}

}  // namespace

void CpuBackend::cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                               int64_t v, int64_t vp, float dloss_scale) {
  OpTimer timer(profile_.get(), kOpXent);
  WEFT_ASSERT(v > 0 && vp >= v, "cross_entropy: need 0 < v <= vp");
  pool_.parallel_for(n, row_grain(vp), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vp;
      float* dr = dlogits ? dlogits + r * vp : nullptr;
      const int32_t target = targets[r];
      if (target < 0) {
        losses[r] = 0.f;
        if (dr) std::fill(dr, dr + vp, 0.f);
        continue;
      }
      WEFT_ASSERT(target < v, "cross_entropy: target " + std::to_string(target) + " >= vocab " + std::to_string(v));
      if (avx2_) {
        losses[r] = xent_row_avx2(dr, lr, target, v, vp, dloss_scale);
        continue;
      }
      // Scalar reference path; in-place safe for the same reason.
      float mx = lr[0];
      for (int64_t j = 1; j < v; ++j) mx = std::max(mx, lr[j]);
      double s = 0.0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(lr[j] - mx));
      const double log_z = static_cast<double>(mx) + std::log(s);
      losses[r] = static_cast<float>(log_z - static_cast<double>(lr[target]));
      if (dr) {
        const float lz = static_cast<float>(log_z);
        for (int64_t j = 0; j < v; ++j) dr[j] = dloss_scale * std::exp(lr[j] - lz);
        dr[target] -= dloss_scale;
        std::fill(dr + v, dr + vp, 0.f);
      }
    }
  });
}

// Vocabulary-parallel passes: the shard's real columns are [0, real) with
// real = clamp(v - first, 0, vs); sums in double, like the fused kernel.
namespace {
int64_t real_columns(int64_t vs, int64_t first, int64_t v) { return std::clamp<int64_t>(v - first, 0, vs); }
}  // namespace

void CpuBackend::xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                                int64_t n, int64_t vs, int64_t first, int64_t v) {
  OpTimer timer(profile_.get(), kOpXent);
  const int64_t real = real_columns(vs, first, v);
  pool_.parallel_for(n, row_grain(vs), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vs;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < real; ++j) mx = std::max(mx, lr[j]);
      row_max[r] = mx;
      const int64_t t = static_cast<int64_t>(targets[r]) - first;
      target_logit[r] = targets[r] >= 0 && t >= 0 && t < real ? lr[t] : 0.f;
    }
  });
}

void CpuBackend::xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n,
                                    int64_t vs, int64_t first, int64_t v) {
  OpTimer timer(profile_.get(), kOpXent);
  const int64_t real = real_columns(vs, first, v);
  pool_.parallel_for(n, row_grain(vs), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vs;
      double s = 0.0;
      for (int64_t j = 0; j < real; ++j) s += std::exp(static_cast<double>(lr[j] - row_max[r]));
      sum_exp[r] = static_cast<float>(s);
    }
  });
}

void CpuBackend::xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                   const float* row_max, const float* sum_exp, const float* target_logit,
                                   int64_t n, int64_t vs, int64_t first, int64_t v, float dloss_scale) {
  OpTimer timer(profile_.get(), kOpXent);
  const int64_t real = real_columns(vs, first, v);
  pool_.parallel_for(n, row_grain(vs), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vs;
      float* dr = dlogits ? dlogits + r * vs : nullptr;
      if (targets[r] < 0) {
        losses[r] = 0.f;
        if (dr) std::fill(dr, dr + vs, 0.f);
        continue;
      }
      WEFT_ASSERT(targets[r] < v, "cross_entropy: target " + std::to_string(targets[r]) + " >= vocab " +
                                      std::to_string(v));
      const double log_z = static_cast<double>(row_max[r]) + std::log(static_cast<double>(sum_exp[r]));
      losses[r] = static_cast<float>(log_z - static_cast<double>(target_logit[r]));
      if (!dr) continue;
      const float lz = static_cast<float>(log_z);
      for (int64_t j = 0; j < real; ++j) dr[j] = dloss_scale * std::exp(lr[j] - lz);
      const int64_t t = static_cast<int64_t>(targets[r]) - first;
      if (t >= 0 && t < real) dr[t] -= dloss_scale;
      std::fill(dr + real, dr + vs, 0.f);
    }
  });
}

// ---------------------------------------------------------------------------
// Elementwise, reductions, optimizer, cast

void CpuBackend::add(float* out, const float* a, const float* b, int64_t n) {
  OpTimer timer(profile_.get(), kOpAdd);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
  });
}

void CpuBackend::accumulate(float* acc, const float* x, int64_t n) {
  OpTimer timer(profile_.get(), kOpAccumulate);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) acc[i] += x[i];
  });
}

void CpuBackend::scale(float* x, float s, int64_t n) {
  OpTimer timer(profile_.get(), kOpScale);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] *= s;
  });
}

void CpuBackend::fill(float* x, float value, int64_t n) {
  OpTimer timer(profile_.get(), kOpFill);
  pool_.parallel_for(n, kCopyGrain / 4, [&](int64_t i0, int64_t i1) { std::fill(x + i0, x + i1, value); });
}

namespace {

// Sum (square = false) or sum of squares of x[0, n) in double: 16 partial sums
// (4 vectors of 4 doubles) in a fixed order, then combined in a fixed order.
template <bool kSquare>
WEFT_AVX2_FMA double block_sum_avx2(const float* x, int64_t n) {
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int u = 0; u < 4; ++u) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * u));
      acc[u] = kSquare ? _mm256_fmadd_pd(v, v, acc[u]) : _mm256_add_pd(acc[u], v);
    }
  }
  double s = simd::hsum(_mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3])));
  for (; i < n; ++i) s += kSquare ? static_cast<double>(x[i]) * x[i] : static_cast<double>(x[i]);
  return s;
}

template <bool kSquare>
double block_sum_scalar(const float* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += kSquare ? static_cast<double>(x[i]) * x[i] : static_cast<double>(x[i]);
  return s;
}

// Sums over fixed blocks of kSumBlock elements, then the blocks in order: the
// result does not depend on the thread count.
template <bool kSquare>
double blocked_sum(ThreadPool& pool, bool avx2, const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(blocks, 0.0);
  pool.parallel_for(blocks, kElementGrain / kSumBlock, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i0 = bi * kSumBlock, len = std::min(n, i0 + kSumBlock) - i0;
      partial[bi] = avx2 ? block_sum_avx2<kSquare>(x + i0, len) : block_sum_scalar<kSquare>(x + i0, len);
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}
}  // namespace

double CpuBackend::sum_squares(const float* x, int64_t n) {
  OpTimer timer(profile_.get(), kOpSumSq);
  return blocked_sum<true>(pool_, avx2_, x, n);
}

double CpuBackend::sum(const float* x, int64_t n) {
  OpTimer timer(profile_.get(), kOpSum);
  return blocked_sum<false>(pool_, avx2_, x, n);
}

namespace {

struct AdamWCoef {
  float lr, beta1, beta2, eps, wd, bc1, bc2, grad_scale;
};

// One pass over p, g, m, v. The vector path does, lane by lane, exactly the
// scalar operations in the scalar order (no FMA), so both give the same bits.
inline void adamw_scalar(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = k.grad_scale * g[i];
    const float mi = k.beta1 * m[i] + (1.f - k.beta1) * gi;
    const float vi = k.beta2 * v[i] + (1.f - k.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / k.bc1;
    const float vhat = vi / k.bc2;
    p[i] -= k.lr * (mhat / (std::sqrt(vhat) + k.eps) + k.wd * p[i]);
  }
}

WEFT_AVX2 void adamw_avx2(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& k) {
  const __m256 b1 = _mm256_set1_ps(k.beta1), b2 = _mm256_set1_ps(k.beta2);
  const __m256 omb1 = _mm256_set1_ps(1.f - k.beta1), omb2 = _mm256_set1_ps(1.f - k.beta2);
  const __m256 bc1 = _mm256_set1_ps(k.bc1), bc2 = _mm256_set1_ps(k.bc2);
  const __m256 lr = _mm256_set1_ps(k.lr), eps = _mm256_set1_ps(k.eps), wd = _mm256_set1_ps(k.wd);
  const __m256 gs = _mm256_set1_ps(k.grad_scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_mul_ps(gs, _mm256_loadu_ps(g + i));
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(omb1, gi));
    const __m256 vi =
        _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(omb2, gi), gi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 mhat = _mm256_div_ps(mi, bc1);
    const __m256 vhat = _mm256_div_ps(vi, bc2);
    const __m256 pi = _mm256_loadu_ps(p + i);
    const __m256 upd = _mm256_add_ps(_mm256_div_ps(mhat, _mm256_add_ps(_mm256_sqrt_ps(vhat), eps)), _mm256_mul_ps(wd, pi));
    _mm256_storeu_ps(p + i, _mm256_sub_ps(pi, _mm256_mul_ps(lr, upd)));
  }
  adamw_scalar(p + i, g + i, m + i, v + i, n - i, k);
}

}  // namespace

void CpuBackend::adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                       float eps, float weight_decay, int64_t step, float grad_scale) {
  OpTimer timer(profile_.get(), kOpAdamW);
  WEFT_ASSERT(step >= 1, "adamw: step counts from 1");
  AdamWCoef k;
  k.lr = lr, k.beta1 = beta1, k.beta2 = beta2, k.eps = eps, k.wd = weight_decay, k.grad_scale = grad_scale;
  k.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step)));
  k.bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step)));
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (avx2_) return adamw_avx2(p + i0, g + i0, m + i0, v + i0, i1 - i0, k);
    adamw_scalar(p + i0, g + i0, m + i0, v + i0, i1 - i0, k);
  });
}

namespace {
template <class Src, class Dst, class Conv>
void cast_loop(ThreadPool& pool, Dst* dst, const Src* src, int64_t n, Conv conv) {
  pool.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] = conv(src[i]);
  });
}
}  // namespace

bool CpuBackend::supports_compute_dtype(DType dtype) const {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

void CpuBackend::cast(const Tensor& dst, const Tensor& src) {
  OpTimer timer(profile_.get(), kOpCast);
  WEFT_ASSERT(dst.numel() == src.numel(),
              "cast: " + shape_str(src.shape()) + " into " + shape_str(dst.shape()));
  const int64_t n = src.numel();
  const DType from = src.dtype(), to = dst.dtype();
  if (from == to) {
    if (n > 0 && dst.raw() != src.raw()) std::memmove(dst.raw(), src.raw(), src.bytes());
  } else if (from == DType::F32 && to == DType::BF16) {
    cast_loop(pool_, dst.data<uint16_t>(), src.data<float>(), n, float_to_bf16);
  } else if (from == DType::BF16 && to == DType::F32) {
    cast_loop(pool_, dst.data<float>(), src.data<uint16_t>(), n, bf16_to_float);
  } else if (from == DType::F32 && to == DType::F16) {
    if (f16c_) {
      uint16_t* d = dst.data<uint16_t>();
      const float* x = src.data<float>();
      pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) { f32_to_f16_f16c(d + i0, x + i0, i1 - i0); });
    } else {
      cast_loop(pool_, dst.data<uint16_t>(), src.data<float>(), n, float_to_f16);
    }
  } else if (from == DType::F16 && to == DType::F32) {
    if (f16c_) {
      float* d = dst.data<float>();
      const uint16_t* x = src.data<uint16_t>();
      pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) { f16_to_f32_f16c(d + i0, x + i0, i1 - i0); });
    } else {
      cast_loop(pool_, dst.data<float>(), src.data<uint16_t>(), n, f16_to_float);
    }
  } else {
    throw Error(std::string("cpu backend: cast from ") + dtype_name(from) + " to " + dtype_name(to) +
                " is not supported (f32<->bf16, f32<->f16, same dtype)");
  }
}

}  // namespace weft
