// The CPU backend's LayerNorm: statistics and parameter gradients summed in
// double, rows on the pool, columns for dw / db.
#include "cpu_kernels.hpp"

#include <cmath>
#include <vector>

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

namespace {

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

void CpuBackend::layernorm_forward(float* out, float* mean, float* rstd, TypedPtr x_in, TypedPtr w_in,
                                   TypedPtr b_in, int64_t n, int64_t c, float eps) {
  OpTimer timer(profile_.get(), kOpLnFwd);
  Tensor wide_x, wide_w, wide_b;
  const float* x = widen(x_in, n * c, wide_x);  // [N,C] fp32
  const float* w = widen(w_in, c, wide_w);
  const float* b = widen(b_in, c, wide_b);
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    if (avx2_) return layernorm_forward_rows_avx2(out, mean, rstd, x, w, b, r0, r1, c, eps);
    layernorm_forward_rows_generic(out, mean, rstd, x, w, b, r0, r1, c, eps);
  });
}

void CpuBackend::layernorm_backward(float* dx, float* dw, float* db, const float* dout, TypedPtr x_in,
                                    TypedPtr w_in, const float* mean, const float* rstd, int64_t n, int64_t c) {
  OpTimer timer(profile_.get(), kOpLnBwd);
  Tensor wide_x, wide_w;
  const float* x = widen(x_in, n * c, wide_x);  // [N,C] fp32, read by both passes
  const float* w = widen(w_in, c, wide_w);
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

}  // namespace weft
