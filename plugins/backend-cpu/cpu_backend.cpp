// The CPU backend object: construction (ISA detection, the profile table printed
// on destruction) and memory: accounting by category, the cache of freed
// blocks, allocation and copies. The kernels live in one file per family:
// gemm.cpp, convert.cpp, elementwise.cpp, layernorm.cpp, attention.cpp,
// embedding_xent.cpp, optimizer.cpp, llama_kernels.cpp, gelu_erf.cpp, dropout.cpp.
#include "cpu_kernels.hpp"

#include <cblas.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "weft/error.hpp"

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

namespace {
constexpr size_t kAlignment = 64;
constexpr size_t kParallelZeroBytes = size_t{4} << 20;  // zero-fill larger blocks on the pool
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

}  // namespace weft
