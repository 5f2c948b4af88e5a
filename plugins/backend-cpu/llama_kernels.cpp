// The CPU backend's Llama-family kernels: RMSNorm, rotary position embedding
// (Hugging Face's rotate-half layout), the SiLU-gated product (SwiGLU) and the
// packing that runs grouped-query attention through the fused causal kernel.
// Plain loops on the backend's pool; every output element is produced by one
// task, and row reductions run in double, so results do not depend on the
// thread count. Weights arrive as TypedPtr (f32, bf16, f16) and are widened
// to fp32 once per call; arithmetic is fp32 (double for the sums).
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_backend.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per chunk

int64_t rows_per_chunk(int64_t row_len) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, row_len)); }

// The fp32 values of a weight vector of n elements.
std::vector<float> widened(TypedPtr p, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  if (n <= 0) return out;
  if (p.dtype == DType::F32) {
    std::memcpy(out.data(), p.data, static_cast<size_t>(n) * sizeof(float));
    return out;
  }
  WEFT_ASSERT(p.dtype == DType::BF16 || p.dtype == DType::F16,
              std::string("cpu backend: a kernel input of dtype ") + dtype_name(p.dtype) + " (f32, bf16, f16 only)");
  const auto* src = static_cast<const uint16_t*>(p.data);
  for (int64_t i = 0; i < n; ++i) out[i] = p.dtype == DType::BF16 ? bf16_to_float(src[i]) : f16_to_float(src[i]);
  return out;
}

// cos and sin of t * theta^(-2i/D) for i < D/2, t < T: tables [T, D/2], angles in double.
void rope_tables(std::vector<float>& cosv, std::vector<float>& sinv, int64_t t, int64_t d, float theta) {
  const int64_t half = d / 2;
  cosv.resize(static_cast<size_t>(t * half));
  sinv.resize(static_cast<size_t>(t * half));
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / static_cast<double>(d));
    for (int64_t p = 0; p < t; ++p) {
      const double a = static_cast<double>(p) * inv_freq;
      cosv[p * half + i] = static_cast<float>(std::cos(a));
      sinv[p * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

// out = rotation of x by +angle (sign 1) or -angle (sign -1), over [B,T,H,D].
void rope_apply(ThreadPool& pool, float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d,
                float theta, float sign) {
  WEFT_ASSERT(d > 0 && d % 2 == 0, "rope: head dimension " + std::to_string(d) + " must be even");
  std::vector<float> cosv, sinv;
  rope_tables(cosv, sinv, t, d, theta);
  const int64_t half = d / 2, row = h * d;
  pool.parallel_for(b * t, rows_per_chunk(row), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* c = cosv.data() + (r % t) * half;
      const float* s = sinv.data() + (r % t) * half;
      for (int64_t hi = 0; hi < h; ++hi) {
        const float* xr = x + r * row + hi * d;
        float* yr = out + r * row + hi * d;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = xr[i], x2 = xr[i + half], si = sign * s[i];
          yr[i] = x1 * c[i] - x2 * si;
          yr[i + half] = x2 * c[i] + x1 * si;
        }
      }
    }
  });
}

float sigmoid(float g) { return 1.f / (1.f + std::exp(-g)); }

}  // namespace

// ---------------------------------------------------------------- RMSNorm

void CpuBackend::rmsnorm_forward(float* out, float* rstd, TypedPtr x_in, TypedPtr w_in, int64_t n, int64_t c,
                                 float eps) {
  Tensor wide_x;
  const float* x = widen(x_in, n * c, wide_x);  // [N,C] fp32
  const std::vector<float> w = widened(w_in, c);
  pool_.parallel_for(n, rows_per_chunk(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * c;
      double ss = 0.0;
      for (int64_t j = 0; j < c; ++j) ss += static_cast<double>(xr[j]) * xr[j];
      const float rs = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(c) + static_cast<double>(eps)));
      rstd[r] = rs;
      float* yr = out + r * c;
      for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * rs * w[j];
    }
  });
}

// y_j = w_j x_j r with r = (mean(x^2) + eps)^-1/2, dr/dx_k = -r^3 x_k / C:
//   dx_k = r w_k dy_k - r^3 x_k / C * sum_j w_j dy_j x_j,   dw_j += sum over rows dy_j x_j r.
void CpuBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, TypedPtr x_in, TypedPtr w_in,
                                  const float* rstd, int64_t n, int64_t c) {
  Tensor wide_x;
  const float* x = widen(x_in, n * c, wide_x);  // [N,C] fp32, read by both passes
  const std::vector<float> w = widened(w_in, c);
  pool_.parallel_for(n, rows_per_chunk(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * c;
      const float* gr = dout + r * c;
      const float rs = rstd[r];
      double dot = 0.0;
      for (int64_t j = 0; j < c; ++j) dot += static_cast<double>(w[j]) * gr[j] * xr[j];
      const float k = static_cast<float>(dot * rs * rs * rs / static_cast<double>(c));
      float* dr = dx + r * c;
      for (int64_t j = 0; j < c; ++j) dr[j] = rs * w[j] * gr[j] - k * xr[j];
    }
  });
  // dw: partitioned over columns, rows summed in order (in double).
  pool_.parallel_for(c, 16, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(static_cast<size_t>(j1 - j0), 0.0);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = j0; j < j1; ++j)
        acc[j - j0] += static_cast<double>(dout[r * c + j]) * x[r * c + j] * rstd[r];
    for (int64_t j = j0; j < j1; ++j) dw[j] += static_cast<float>(acc[j - j0]);
  });
}

// ---------------------------------------------------------------- RoPE

void CpuBackend::rope_forward(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d,
                              float theta) {
  rope_apply(pool_, out, x, b, t, h, d, theta, 1.f);
}

// The rotation is orthogonal: its transpose is the rotation by -angle.
void CpuBackend::rope_backward(float* dx, const float* dout, int64_t b, int64_t t, int64_t h, int64_t d,
                               float theta) {
  rope_apply(pool_, dx, dout, b, t, h, d, theta, -1.f);
}

// ---------------------------------------------------------------- SwiGLU

void CpuBackend::swiglu_forward(float* out, TypedPtr gate_in, TypedPtr up_in, int64_t n) {
  Tensor wide_gate, wide_up;
  const float* gate = widen(gate_in, n, wide_gate);  // [n] fp32
  const float* up = widen(up_in, n, wide_up);
  pool_.parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
  });
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
void CpuBackend::swiglu_backward(float* dgate, float* dup, TypedPtr gate_in, TypedPtr up_in, const float* dout,
                                 int64_t n) {
  Tensor wide_gate, wide_up;
  const float* gate = widen(gate_in, n, wide_gate);  // [n] fp32
  const float* up = widen(up_in, n, wide_up);
  pool_.parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = gate[i], s = sigmoid(g);
      dup[i] = dout[i] * g * s;
      dgate[i] = dout[i] * up[i] * s * (1.f + g * (1.f - s));
    }
  });
}

// ---------------------------------------------------------------- grouped-query attention

void CpuBackend::gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t,
                          int64_t h, int64_t kv, int64_t d) {
  WEFT_ASSERT(h > 0 && kv > 0 && h % kv == 0 && d > 0,
              "gqa: heads " + std::to_string(h) + " not divisible by kv heads " + std::to_string(kv));
  const int64_t c = h * d, ckv = kv * d, group = h / kv;
  pool_.parallel_for(b * t, rows_per_chunk(3 * c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = qkv + r * 3 * c;
      std::memcpy(dst, q + r * c, static_cast<size_t>(c) * sizeof(float));
      for (int64_t hi = 0; hi < h; ++hi) {
        const int64_t g = hi / group;
        std::memcpy(dst + c + hi * d, k + r * ckv + g * d, static_cast<size_t>(d) * sizeof(float));
        std::memcpy(dst + 2 * c + hi * d, v + r * ckv + g * d, static_cast<size_t>(d) * sizeof(float));
      }
    }
  });
}

void CpuBackend::gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h,
                            int64_t kv, int64_t d) {
  WEFT_ASSERT(h > 0 && kv > 0 && h % kv == 0 && d > 0,
              "gqa: heads " + std::to_string(h) + " not divisible by kv heads " + std::to_string(kv));
  const int64_t c = h * d, ckv = kv * d, group = h / kv;
  pool_.parallel_for(b * t, rows_per_chunk(3 * c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* src = dqkv + r * 3 * c;
      std::memcpy(dq + r * c, src, static_cast<size_t>(c) * sizeof(float));
      for (int64_t g = 0; g < kv; ++g) {  // heads g*group .. summed in order
        float* dkr = dk + r * ckv + g * d;
        float* dvr = dv + r * ckv + g * d;
        for (int64_t j = 0; j < d; ++j) dkr[j] = 0.f, dvr[j] = 0.f;
        for (int64_t hi = g * group; hi < (g + 1) * group; ++hi)
          for (int64_t j = 0; j < d; ++j) {
            dkr[j] += src[c + hi * d + j];
            dvr[j] += src[2 * c + hi * d + j];
          }
      }
    }
  });
}

}  // namespace weft
