#include "cpu_backend.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "weft/error.hpp"

namespace weft {

namespace {

constexpr size_t kAlignment = 64;
constexpr int64_t kElementGrain = 1 << 15;  // elementwise kernels: elements per chunk
constexpr int64_t kColumnGrain = 16;        // column-partitioned reductions: columns per chunk
constexpr int64_t kSumBlock = 1 << 12;      // sum/sum_squares: elements per fixed block

// Rows per chunk so that a chunk holds roughly kElementGrain elements.
int64_t row_grain(int64_t row_len) { return std::max<int64_t>(1, kElementGrain / std::max<int64_t>(1, row_len)); }

uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

int blas_int(int64_t v, const char* what) {
  WEFT_ASSERT(v >= 0 && v <= std::numeric_limits<int>::max(),
              std::string("gemm: ") + what + " out of BLAS int range: " + std::to_string(v));
  return static_cast<int>(v);
}

}  // namespace

// ---------------------------------------------------------------------------
// 16-bit float conversions

uint16_t float_to_bf16(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_f16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or NaN (NaN stays quiet NaN, keeps top payload bits)
    return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x0200u | ((a >> 13) & 0x03ffu) : 0u));
  }
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a >= 0x38800000u) {                                              // normal half (>= 2^-14)
    uint32_t h = (a >> 13) - (112u << 10);                             // rebias exponent 127 -> 15
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: fine
    return static_cast<uint16_t>(sign | h);
  }
  if (a <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 rounds to zero
  // Subnormal half: value / 2^-24, rounded to nearest even.
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14..24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // 0x400 becomes the smallest normal
  return static_cast<uint16_t>(sign | h);
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x03ffu;
  if (exp == 0) {
    const float mag = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal, exact
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// ---------------------------------------------------------------------------
// Construction, memory

void CpuBackend::Accounting::add(MemCategory category, int64_t bytes) {
  const int i = static_cast<int>(category);
  std::lock_guard<std::mutex> lock(mutex);
  stats.current[i] += bytes;
  stats.peak[i] = std::max(stats.peak[i], stats.current[i]);
}

CpuBackend::CpuBackend(int threads) : pool_(threads), accounting_(std::make_shared<Accounting>()) {
  openblas_set_num_threads(pool_.size());
}

CpuBackend::~CpuBackend() = default;

Tensor CpuBackend::alloc(const Shape& shape, DType dtype, MemCategory category) {
  for (int64_t d : shape) WEFT_ASSERT(d >= 0, "alloc: negative dimension in " + shape_str(shape));
  const int i = static_cast<int>(category);
  WEFT_ASSERT(i >= 0 && i < kMemCategoryCount, "alloc: bad memory category");
  const int64_t bytes = shape_numel(shape) * static_cast<int64_t>(dtype_size(dtype));
  const size_t capacity = (static_cast<size_t>(std::max<int64_t>(bytes, 1)) + kAlignment - 1) / kAlignment * kAlignment;
  void* data = std::aligned_alloc(kAlignment, capacity);
  if (!data) {
    throw Error("cpu backend: out of host memory allocating " + std::to_string(bytes) + " bytes of " +
                mem_category_name(category) + " " + shape_str(shape));
  }
  std::memset(data, 0, capacity);
  auto storage = std::make_shared<Storage>();
  storage->data = data;
  storage->bytes = static_cast<size_t>(bytes);
  storage->device = Device::Host;
  accounting_->add(category, bytes);
  storage->release = [acct = accounting_, category, bytes](Storage& s) {
    std::free(s.data);
    s.data = nullptr;
    acct->add(category, -bytes);
  };
  return Tensor(std::move(storage), 0, shape, dtype);
}

MemStats CpuBackend::mem_stats() const {
  std::lock_guard<std::mutex> lock(accounting_->mutex);
  return accounting_->stats;
}

void CpuBackend::reset_peak() {
  std::lock_guard<std::mutex> lock(accounting_->mutex);
  accounting_->stats.peak = accounting_->stats.current;
}

void CpuBackend::copy_to_host(void* dst, const Tensor& src) {
  WEFT_ASSERT(src.device() == Device::Host, "cpu backend: copy_to_host from a non-host tensor");
  if (src.bytes() > 0) std::memcpy(dst, src.raw(), src.bytes());
}

void CpuBackend::copy_from_host(const Tensor& dst, const void* src) {
  WEFT_ASSERT(dst.device() == Device::Host, "cpu backend: copy_from_host into a non-host tensor");
  if (dst.bytes() > 0) std::memcpy(dst.raw(), src, dst.bytes());
}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  WEFT_ASSERT(dst.device() == Device::Host && src.device() == Device::Host, "cpu backend: copy of a non-host tensor");
  WEFT_ASSERT(dst.bytes() == src.bytes(), "copy: " + std::to_string(src.bytes()) + " bytes into " +
                                              std::to_string(dst.bytes()));
  if (dst.bytes() > 0 && dst.raw() != src.raw()) std::memmove(dst.raw(), src.raw(), dst.bytes());  // views may overlap
}

// ---------------------------------------------------------------------------
// GEMM, bias

void CpuBackend::gemm(const GemmArgs& g) {
  WEFT_ASSERT(g.m >= 0 && g.n >= 0 && g.k >= 0 && g.batch >= 0, "gemm: negative size");
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
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
  const int m = blas_int(g.m, "m"), n = blas_int(g.n, "n"), k = blas_int(g.k, "k");
  const int lda = blas_int(g.lda, "lda"), ldb = blas_int(g.ldb, "ldb"), ldc = blas_int(g.ldc, "ldc");
  const CBLAS_TRANSPOSE ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = g.trans_b ? CblasTrans : CblasNoTrans;
  for (int64_t bi = 0; bi < g.batch; ++bi) {
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, g.alpha, g.a + bi * g.stride_a, lda, g.b + bi * g.stride_b, ldb,
                g.beta, g.c + bi * g.stride_c, ldc);
  }
}

void CpuBackend::add_bias(float* out, const float* bias, int64_t n, int64_t o) {
  pool_.parallel_for(n, row_grain(o), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = out + r * o;
      for (int64_t j = 0; j < o; ++j) row[j] += bias[j];
    }
  });
}

void CpuBackend::bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) {
  // Partitioned over columns; each column sums its rows in order (in double).
  pool_.parallel_for(o, kColumnGrain, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(j1 - j0, 0.0);
    for (int64_t r = 0; r < n; ++r) {
      const float* row = dout + r * o;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += row[j];
    }
    for (int64_t j = j0; j < j1; ++j) dbias[j] += static_cast<float>(acc[j - j0]);
  });
}

// ---------------------------------------------------------------------------
// LayerNorm, GeLU

void CpuBackend::layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                                   const float* b, int64_t n, int64_t c, float eps) {
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * c;
      double s = 0.0;
      for (int64_t j = 0; j < c; ++j) s += xr[j];
      const double mu = s / static_cast<double>(c);
      double ss = 0.0;
      for (int64_t j = 0; j < c; ++j) {
        const double d = xr[j] - mu;
        ss += d * d;
      }
      const double var = ss / static_cast<double>(c);
      const float m = static_cast<float>(mu);
      const float rs = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
      float* orow = out + r * c;
      for (int64_t j = 0; j < c; ++j) orow[j] = (xr[j] - m) * rs * w[j] + b[j];
      mean[r] = m;
      rstd[r] = rs;
    }
  });
}

void CpuBackend::layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                                    const float* w, const float* mean, const float* rstd, int64_t n, int64_t c) {
  // dx: per row. With xhat = (x - mean) * rstd and g = dout * w,
  // dx += rstd * (g - mean(g) - xhat * mean(g * xhat)).
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * c;
      const float* dr = dout + r * c;
      const float m = mean[r], rs = rstd[r];
      double sum_g = 0.0, sum_gx = 0.0;
      for (int64_t j = 0; j < c; ++j) {
        const float xhat = (xr[j] - m) * rs;
        const float gj = dr[j] * w[j];
        sum_g += gj;
        sum_gx += static_cast<double>(gj) * xhat;
      }
      const float mean_g = static_cast<float>(sum_g / static_cast<double>(c));
      const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(c));
      float* dxr = dx + r * c;
      for (int64_t j = 0; j < c; ++j) {
        const float xhat = (xr[j] - m) * rs;
        dxr[j] += rs * (dr[j] * w[j] - mean_g - xhat * mean_gx);
      }
    }
  });
  // dw, db: partitioned over columns, rows summed in order (in double).
  pool_.parallel_for(c, kColumnGrain, [&](int64_t j0, int64_t j1) {
    const int64_t width = j1 - j0;
    std::vector<double> aw(width, 0.0), ab(width, 0.0);
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * c;
      const float* dr = dout + r * c;
      const float m = mean[r], rs = rstd[r];
      for (int64_t j = j0; j < j1; ++j) {
        const float xhat = (xr[j] - m) * rs;
        aw[j - j0] += static_cast<double>(dr[j]) * xhat;
        ab[j - j0] += dr[j];
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      dw[j] += static_cast<float>(aw[j - j0]);
      db[j] += static_cast<float>(ab[j - j0]);
    }
  });
}

namespace {
constexpr float kGeluA = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluB = 0.044715f;
}  // namespace

void CpuBackend::gelu_forward(float* out, const float* x, int64_t n) {
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float v = x[i];
      out[i] = 0.5f * v * (1.f + std::tanh(kGeluA * (v + kGeluB * v * v * v)));
    }
  });
}

void CpuBackend::gelu_backward(float* dx, const float* x, const float* dout, int64_t n) {
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float v = x[i];
      const float th = std::tanh(kGeluA * (v + kGeluB * v * v * v));
      const float du = kGeluA * (1.f + 3.f * kGeluB * v * v);
      const float grad = 0.5f * (1.f + th) + 0.5f * v * (1.f - th * th) * du;
      dx[i] = grad * dout[i];
    }
  });
}

// ---------------------------------------------------------------------------
// Causal attention
//
// One task is one (batch, head) pair and one tile of kAttnTileQ query rows.
// The forward streams key tiles of kAttnTileK keys up to the diagonal with an
// online softmax (running max m, running sum l, rescaled accumulator), so no
// more than one [TQ, TK] score tile exists per task. The backward recomputes
// probabilities from the saved lse in two passes that need no atomics:
//   pass 1, one task per (b, h, key tile): dK and dV of those keys, summing over
//           all query rows i >= key in order;
//   pass 2, one task per (b, h, query tile): dQ of those rows over key tiles.
// Every element of dqkv is written by exactly one task.

namespace {

struct AttnShape {
  int64_t b, t, c, h, hs;
  float scale;
  int64_t row() const { return 3 * c; }  // qkv row stride
  const float* q(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const {
    return qkv + (bi * t + ti) * row() + hi * hs;
  }
  const float* k(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const { return q(qkv, bi, ti, hi) + c; }
  const float* v(const float* qkv, int64_t bi, int64_t ti, int64_t hi) const { return q(qkv, bi, ti, hi) + 2 * c; }
};

AttnShape attn_shape(int64_t b, int64_t t, int64_t c, int64_t h) {
  WEFT_ASSERT(b >= 0 && t >= 0 && c > 0 && h > 0 && c % h == 0,
              "attention: channels " + std::to_string(c) + " not divisible by heads " + std::to_string(h));
  const int64_t hs = c / h;
  return AttnShape{b, t, c, h, hs, static_cast<float>(1.0 / std::sqrt(static_cast<double>(hs)))};
}

// Loads rows [j0, j0+nk) of K (or V) for one head transposed into dst[hs][TK].
void load_transposed(float* dst, const float* first_row, int64_t row_stride, int64_t nk, int64_t hs) {
  constexpr int64_t tk = CpuBackend::kAttnTileK;
  for (int64_t jj = 0; jj < nk; ++jj) {
    const float* src = first_row + jj * row_stride;
    for (int64_t d = 0; d < hs; ++d) dst[d * tk + jj] = src[d];
  }
}

// s[jj] = scale * dot(q, key jj) for jj < nvalid, with the keys transposed in kt[hs][TK].
void scores_row(float* s, const float* q, const float* kt, int64_t nvalid, int64_t hs, float scale) {
  constexpr int64_t tk = CpuBackend::kAttnTileK;
  for (int64_t jj = 0; jj < nvalid; ++jj) s[jj] = 0.f;
  for (int64_t d = 0; d < hs; ++d) {
    const float qd = q[d];
    const float* kd = kt + d * tk;
    for (int64_t jj = 0; jj < nvalid; ++jj) s[jj] += qd * kd[jj];
  }
  for (int64_t jj = 0; jj < nvalid; ++jj) s[jj] *= scale;
}

}  // namespace

void CpuBackend::attention_forward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t c,
                                   int64_t h) {
  const AttnShape a = attn_shape(b, t, c, h);
  const int64_t hs = a.hs;
  constexpr int64_t TQ = kAttnTileQ, TK = kAttnTileK;
  const int64_t nq = (t + TQ - 1) / TQ;
  pool_.parallel_for(b * h * nq, 1, [&](int64_t task0, int64_t task1) {
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
          if (nvalid <= 0) continue;
          const int64_t ii = i - i0;
          scores_row(s.data(), a.q(qkv, bi, i, hi), kt.data(), nvalid, hs, a.scale);
          float mx = m[ii];
          for (int64_t jj = 0; jj < nvalid; ++jj) mx = std::max(mx, s[jj]);
          const float corr = std::exp(m[ii] - mx);  // 0 on the first tile (m = -inf)
          double psum = 0.0;
          for (int64_t jj = 0; jj < nvalid; ++jj) {
            s[jj] = std::exp(s[jj] - mx);
            psum += s[jj];
          }
          l[ii] = l[ii] * corr + psum;
          m[ii] = mx;
          float* accr = acc.data() + ii * hs;
          for (int64_t d = 0; d < hs; ++d) accr[d] *= corr;
          for (int64_t jj = 0; jj < nvalid; ++jj) {
            const float p = s[jj];
            const float* vr = a.v(qkv, bi, j0 + jj, hi);
            for (int64_t d = 0; d < hs; ++d) accr[d] += p * vr[d];
          }
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
  });
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                                    const float* lse, int64_t b, int64_t t, int64_t c, int64_t h) {
  const AttnShape a = attn_shape(b, t, c, h);
  const int64_t hs = a.hs;
  const float scale = a.scale;
  constexpr int64_t TQ = kAttnTileQ, TK = kAttnTileK;
  const int64_t row = a.row();

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

  // For query row i against keys [j0, j0+nvalid): p = softmax probabilities and
  // ds = p * (dp - dsum), dp = dout_i . v_j. kt, vt: the key tile transposed.
  auto probs_row = [&](float* p, float* ds, int64_t bi, int64_t hi, int64_t i, const float* kt, const float* vt,
                       int64_t nvalid) {
    const int64_t bh = bi * h + hi;
    scores_row(p, a.q(qkv, bi, i, hi), kt, nvalid, hs, scale);
    const float li = lse[bh * t + i];
    for (int64_t jj = 0; jj < nvalid; ++jj) p[jj] = std::exp(p[jj] - li);
    scores_row(ds, dout + (bi * t + i) * c + hi * hs, vt, nvalid, hs, 1.f);
    const float di = dsum[bh * t + i];
    for (int64_t jj = 0; jj < nvalid; ++jj) ds[jj] = p[jj] * (ds[jj] - di);
  };

  // Pass 1: dK, dV per key tile.
  const int64_t nk_tiles = (t + TK - 1) / TK;
  pool_.parallel_for(b * h * nk_tiles, 1, [&](int64_t task0, int64_t task1) {
    std::vector<float> kt(hs * TK), vt(hs * TK), p(TK), ds(TK), dk(TK * hs), dv(TK * hs);
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t bh = task / nk_tiles, bi = bh / h, hi = bh % h;
      const int64_t j0 = (task % nk_tiles) * TK, j1 = std::min(t, j0 + TK), nk = j1 - j0;
      load_transposed(kt.data(), a.k(qkv, bi, j0, hi), row, nk, hs);
      load_transposed(vt.data(), a.v(qkv, bi, j0, hi), row, nk, hs);
      std::fill(dk.begin(), dk.end(), 0.f);
      std::fill(dv.begin(), dv.end(), 0.f);
      for (int64_t i = j0; i < t; ++i) {  // query rows that see any of these keys
        const int64_t nvalid = std::min(j1, i + 1) - j0;
        probs_row(p.data(), ds.data(), bi, hi, i, kt.data(), vt.data(), nvalid);
        const float* qi = a.q(qkv, bi, i, hi);
        const float* doi = dout + (bi * t + i) * c + hi * hs;
        for (int64_t jj = 0; jj < nvalid; ++jj) {
          float* dvr = dv.data() + jj * hs;
          float* dkr = dk.data() + jj * hs;
          const float pj = p[jj], dsj = ds[jj] * scale;
          for (int64_t d = 0; d < hs; ++d) {
            dvr[d] += pj * doi[d];
            dkr[d] += dsj * qi[d];
          }
        }
      }
      for (int64_t jj = 0; jj < nk; ++jj) {
        float* base = dqkv + (bi * t + j0 + jj) * row + hi * hs;
        std::memcpy(base + c, dk.data() + jj * hs, hs * sizeof(float));
        std::memcpy(base + 2 * c, dv.data() + jj * hs, hs * sizeof(float));
      }
    }
  });

  // Pass 2: dQ per query tile.
  const int64_t nq_tiles = (t + TQ - 1) / TQ;
  pool_.parallel_for(b * h * nq_tiles, 1, [&](int64_t task0, int64_t task1) {
    std::vector<float> kt(hs * TK), vt(hs * TK), p(TK), ds(TK), dq(TQ * hs);
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t bh = task / nq_tiles, bi = bh / h, hi = bh % h;
      const int64_t i0 = (task % nq_tiles) * TQ, i1 = std::min(t, i0 + TQ);
      std::fill(dq.begin(), dq.end(), 0.f);
      for (int64_t j0 = 0; j0 < i1; j0 += TK) {
        const int64_t j1 = std::min(i1, j0 + TK);
        load_transposed(kt.data(), a.k(qkv, bi, j0, hi), row, j1 - j0, hs);
        load_transposed(vt.data(), a.v(qkv, bi, j0, hi), row, j1 - j0, hs);
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t nvalid = std::min(j1, i + 1) - j0;
          if (nvalid <= 0) continue;
          probs_row(p.data(), ds.data(), bi, hi, i, kt.data(), vt.data(), nvalid);
          float* dqr = dq.data() + (i - i0) * hs;
          for (int64_t jj = 0; jj < nvalid; ++jj) {
            const float dsj = ds[jj] * scale;
            const float* kr = a.k(qkv, bi, j0 + jj, hi);
            for (int64_t d = 0; d < hs; ++d) dqr[d] += dsj * kr[d];
          }
        }
      }
      for (int64_t i = i0; i < i1; ++i) {
        std::memcpy(dqkv + (bi * t + i) * row + hi * hs, dq.data() + (i - i0) * hs, hs * sizeof(float));
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Embedding, cross-entropy

void CpuBackend::embedding_forward(float* out, const int32_t* ids, const float* table, int64_t n, int64_t c) {
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      WEFT_ASSERT(ids[r] >= 0, "embedding: negative id " + std::to_string(ids[r]));
      std::memcpy(out + r * c, table + static_cast<int64_t>(ids[r]) * c, c * sizeof(float));
    }
  });
}

void CpuBackend::embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c) {
  // Partitioned over columns: each task owns a column range of every table row
  // and adds the rows of dout in order, so repeated ids never race.
  for (int64_t r = 0; r < n; ++r) WEFT_ASSERT(ids[r] >= 0, "embedding: negative id " + std::to_string(ids[r]));
  pool_.parallel_for(c, kColumnGrain, [&](int64_t j0, int64_t j1) {
    for (int64_t r = 0; r < n; ++r) {
      float* dst = dtable + static_cast<int64_t>(ids[r]) * c;
      const float* src = dout + r * c;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  });
}

void CpuBackend::cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                               int64_t v, int64_t vp, float dloss_scale) {
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

// ---------------------------------------------------------------------------
// Elementwise, reductions, optimizer, cast

void CpuBackend::add(float* out, const float* a, const float* b, int64_t n) {
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
  });
}

void CpuBackend::accumulate(float* acc, const float* x, int64_t n) {
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) acc[i] += x[i];
  });
}

void CpuBackend::scale(float* x, float s, int64_t n) {
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] *= s;
  });
}

namespace {
// Sums f(x[i]) in double over fixed blocks, then the blocks in order: the
// result does not depend on the thread count.
template <class F>
double blocked_sum(ThreadPool& pool, const float* x, int64_t n, F f) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> partial(blocks, 0.0);
  pool.parallel_for(blocks, kElementGrain / kSumBlock, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i0 = bi * kSumBlock, i1 = std::min(n, i0 + kSumBlock);
      double s = 0.0;
      for (int64_t i = i0; i < i1; ++i) s += f(static_cast<double>(x[i]));
      partial[bi] = s;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}
}  // namespace

double CpuBackend::sum_squares(const float* x, int64_t n) {
  return blocked_sum(pool_, x, n, [](double v) { return v * v; });
}

double CpuBackend::sum(const float* x, int64_t n) {
  return blocked_sum(pool_, x, n, [](double v) { return v; });
}

void CpuBackend::adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                       float eps, float weight_decay, int64_t step) {
  WEFT_ASSERT(step >= 1, "adamw: step counts from 1");
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step)));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step)));
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float gi = g[i];
      const float mi = beta1 * m[i] + (1.f - beta1) * gi;
      const float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
      m[i] = mi;
      v[i] = vi;
      const float mhat = mi / bc1;
      const float vhat = vi / bc2;
      p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + weight_decay * p[i]);
    }
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

void CpuBackend::cast(const Tensor& dst, const Tensor& src) {
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
    cast_loop(pool_, dst.data<uint16_t>(), src.data<float>(), n, float_to_f16);
  } else if (from == DType::F16 && to == DType::F32) {
    cast_loop(pool_, dst.data<float>(), src.data<uint16_t>(), n, f16_to_float);
  } else {
    throw Error(std::string("cpu backend: cast from ") + dtype_name(from) + " to " + dtype_name(to) +
                " is not supported (f32<->bf16, f32<->f16, same dtype)");
  }
}

}  // namespace weft
