// The CPU backend's GEMM: 16-bit inputs widened to fp32, products cut into
// panels (or along k) computed by single-threaded OpenBLAS sgemm calls on the
// backend's pool.
#include "cpu_kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "weft/error.hpp"

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

// ---------------------------------------------------------------------------
// GEMM
//
// A GEMM of at least kGemmParallelFlops is cut along the larger of m and n into
// panels (a multiple of the thread count of them, so the pool's threads get equal
// shares); each panel is one single-threaded cblas_sgemm on the pool. Splitting
// the larger side means only the smaller operand is packed once per panel. The
// panels depend only on the shape and the thread count, and every element of C
// is produced by one call over the whole k, so results are deterministic.

namespace {
int blas_int(int64_t v, const char* what) {
  WEFT_ASSERT(v >= 0 && v <= std::numeric_limits<int>::max(),
              std::string("gemm: ") + what + " out of BLAS int range: " + std::to_string(v));
  return static_cast<int>(v);
}
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
  const double flops = 2.0 * static_cast<double>(args.m) * static_cast<double>(args.n) *
                       static_cast<double>(args.k) * static_cast<double>(args.batch);
  OpTimer timer(profile_.get(), static_cast<Op>(kOpGemmNN + 2 * args.trans_a + args.trans_b), flops);  // with the widening
  Tensor wide_a, wide_b;
  Sgemm g;
  g.trans_a = args.trans_a, g.trans_b = args.trans_b;
  g.m = args.m, g.n = args.n, g.k = args.k;
  g.alpha = args.alpha, g.beta = args.beta;
  g.a = widen(args.a,
              operand_extent(args.trans_a ? args.k : args.m, args.trans_a ? args.m : args.k, args.lda, args.batch,
                             args.stride_a),
              wide_a);
  g.b = widen(args.b,
              operand_extent(args.trans_b ? args.n : args.k, args.trans_b ? args.k : args.n, args.ldb, args.batch,
                             args.stride_b),
              wide_b);
  g.lda = args.lda, g.ldb = args.ldb;
  g.c = args.c, g.ldc = args.ldc;
  g.batch = args.batch, g.stride_a = args.stride_a, g.stride_b = args.stride_b, g.stride_c = args.stride_c;
  WEFT_ASSERT(g.ldc >= g.n, "gemm: ldc < n");
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

}  // namespace weft
