// The CPU backend's Llama-family kernels (RMSNorm, RoPE, SwiGLU, grouped-query
// attention packing) against naive double-precision references written from
// the formulas, finite differences of those references, and adjoint identities,
// at odd sizes with 1 and 3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cpu_backend.hpp"
#include "weft/half.hpp"

namespace {

using weft::CpuBackend;
using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec random_vec(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Vec v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

void expect_close(const Vec& got, const DVec& want, double rel, double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= abs + rel * std::fabs(want[i])) && ++misses <= 5)
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i];
  }
  EXPECT_EQ(misses, 0) << what;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

class LlamaKernels : public ::testing::TestWithParam<int> {
 protected:
  CpuBackend be{GetParam()};
};

// ---------------------------------------------------------------- RMSNorm

// y = x / sqrt(mean(x^2) + eps) * w, in double.
DVec rmsnorm_ref(const DVec& x, const DVec& w, int64_t n, int64_t c, double eps) {
  DVec y(x.size());
  for (int64_t r = 0; r < n; ++r) {
    double ms = 0;
    for (int64_t j = 0; j < c; ++j) ms += x[r * c + j] * x[r * c + j];
    ms /= static_cast<double>(c);
    for (int64_t j = 0; j < c; ++j) y[r * c + j] = x[r * c + j] / std::sqrt(ms + eps) * w[j];
  }
  return y;
}

TEST_P(LlamaKernels, RmsNormForwardAndBackwardMatchFiniteDifferences) {
  const int64_t n = 7, c = 37;
  const double eps = 1e-5;
  Vec x = random_vec(n * c, 1), w = random_vec(c, 2, 0.5f, 1.5f), g = random_vec(n * c, 3);
  Vec y(n * c), rstd(n), dx(n * c, 99.f), dw(c, 0.25f);
  be.rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, c, static_cast<float>(eps));
  const DVec xd(x.begin(), x.end()), wd(w.begin(), w.end());
  expect_close(y, rmsnorm_ref(xd, wd, n, c, eps), 1e-5, 1e-6, "rmsnorm y");
  be.rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), n, c);
  // L = sum(y * g); central differences of the double reference.
  auto loss = [&](const DVec& xx, const DVec& ww) {
    const DVec yy = rmsnorm_ref(xx, ww, n, c, eps);
    double s = 0;
    for (size_t i = 0; i < yy.size(); ++i) s += yy[i] * g[i];
    return s;
  };
  const double h = 1e-6;
  DVec want_dx(n * c), want_dw(c);
  for (int64_t i = 0; i < n * c; ++i) {
    DVec p = xd, m = xd;
    p[i] += h, m[i] -= h;
    want_dx[i] = (loss(p, wd) - loss(m, wd)) / (2 * h);
  }
  for (int64_t j = 0; j < c; ++j) {
    DVec p = wd, m = wd;
    p[j] += h, m[j] -= h;
    want_dw[j] = 0.25 + (loss(xd, p) - loss(xd, m)) / (2 * h);  // dw accumulates
  }
  expect_close(dx, want_dx, 1e-4, 1e-5, "rmsnorm dx (overwritten)");
  expect_close(dw, want_dw, 1e-4, 1e-5, "rmsnorm dw (accumulated)");
}

TEST_P(LlamaKernels, RmsNormReadsBf16Weights) {
  const int64_t n = 5, c = 19;
  Vec x = random_vec(n * c, 4), w = random_vec(c, 5, 0.5f, 1.5f);
  std::vector<uint16_t> w16(c);
  Vec w_wide(c);
  for (int64_t j = 0; j < c; ++j) w16[j] = weft::float_to_bf16(w[j]), w_wide[j] = weft::bf16_to_float(w16[j]);
  Vec y16(n * c), y32(n * c), r16(n), r32(n);
  be.rmsnorm_forward(y16.data(), r16.data(), x.data(), weft::TypedPtr(w16.data(), weft::DType::BF16), n, c, 1e-6f);
  be.rmsnorm_forward(y32.data(), r32.data(), x.data(), w_wide.data(), n, c, 1e-6f);
  EXPECT_EQ(y16, y32);
}

// ---------------------------------------------------------------- RoPE

// Hugging Face's form: emb = cat(freqs, freqs), out = x * cos(emb) + rotate_half(x) * sin(emb),
// rotate_half(x) = cat(-x[D/2:], x[:D/2]).
DVec rope_ref(const Vec& x, int64_t b, int64_t t, int64_t h, int64_t d, double theta) {
  DVec out(x.size());
  const int64_t half = d / 2;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t p = 0; p < t; ++p)
      for (int64_t hi = 0; hi < h; ++hi) {
        const int64_t base = ((bi * t + p) * h + hi) * d;
        for (int64_t i = 0; i < d; ++i) {
          const double freq = std::pow(theta, -2.0 * static_cast<double>(i % half) / static_cast<double>(d));
          const double rot = i < half ? -static_cast<double>(x[base + i + half]) : x[base + i - half];
          out[base + i] = x[base + i] * std::cos(p * freq) + rot * std::sin(p * freq);
        }
      }
  return out;
}

TEST_P(LlamaKernels, RopeMatchesRotateHalfAndBackwardIsItsTranspose) {
  const int64_t b = 2, t = 13, h = 3, d = 10;
  const float theta = 10000.f;
  Vec x = random_vec(b * t * h * d, 6), g = random_vec(b * t * h * d, 7);
  Vec y(x.size()), dx(x.size());
  be.rope_forward(y.data(), x.data(), b, t, h, d, theta);
  expect_close(y, rope_ref(x, b, t, h, d, theta), 1e-5, 1e-6, "rope");
  be.rope_backward(dx.data(), g.data(), b, t, h, d, theta);
  // <R x, g> = <x, R^T g>
  EXPECT_NEAR(dot(y, g), dot(x, dx), 1e-4 * std::fabs(dot(y, g)) + 1e-5);
  Vec inplace = x;
  be.rope_forward(inplace.data(), inplace.data(), b, t, h, d, theta);
  EXPECT_EQ(inplace, y);
  Vec back(x.size());
  be.rope_backward(back.data(), y.data(), b, t, h, d, theta);  // R^T R = I
  expect_close(back, DVec(x.begin(), x.end()), 1e-5, 1e-6, "rope round trip");
}

// ---------------------------------------------------------------- SwiGLU

TEST_P(LlamaKernels, SwigluForwardAndBackwardMatchFiniteDifferences) {
  const int64_t n = 1001;
  Vec gate = random_vec(n, 8, -6.f, 6.f), up = random_vec(n, 9), dout = random_vec(n, 10);
  Vec out(n), dgate(n, 5.f), dup(n, 5.f);
  be.swiglu_forward(out.data(), gate.data(), up.data(), n);
  auto f = [](double g, double u) { return g / (1 + std::exp(-g)) * u; };
  DVec want(n), want_dg(n), want_du(n);
  const double h = 1e-6;
  for (int64_t i = 0; i < n; ++i) {
    want[i] = f(gate[i], up[i]);
    want_dg[i] = dout[i] * (f(gate[i] + h, up[i]) - f(gate[i] - h, up[i])) / (2 * h);
    want_du[i] = dout[i] * (f(gate[i], up[i] + h) - f(gate[i], up[i] - h)) / (2 * h);
  }
  expect_close(out, want, 1e-5, 1e-6, "swiglu");
  be.swiglu_backward(dgate.data(), dup.data(), gate.data(), up.data(), dout.data(), n);
  expect_close(dgate, want_dg, 1e-4, 1e-6, "swiglu dgate");
  expect_close(dup, want_du, 1e-4, 1e-6, "swiglu dup");
}

// ---------------------------------------------------------------- grouped-query attention

// Causal attention where head i reads kv head i / (h / kv), in double.
DVec gqa_attention_ref(const Vec& q, const Vec& k, const Vec& v, int64_t b, int64_t t, int64_t h, int64_t kv,
                       int64_t d) {
  DVec out(b * t * h * d, 0.0);
  const int64_t group = h / kv;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t hi = 0; hi < h; ++hi)
      for (int64_t i = 0; i < t; ++i) {
        const int64_t g = hi / group;
        DVec s(i + 1);
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double acc = 0;
          for (int64_t e = 0; e < d; ++e)
            acc += static_cast<double>(q[((bi * t + i) * h + hi) * d + e]) * k[((bi * t + j) * kv + g) * d + e];
          s[j] = acc / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (double& sj : s) z += (sj = std::exp(sj - mx));
        for (int64_t j = 0; j <= i; ++j)
          for (int64_t e = 0; e < d; ++e)
            out[((bi * t + i) * h + hi) * d + e] += s[j] / z * v[((bi * t + j) * kv + g) * d + e];
      }
  return out;
}

TEST_P(LlamaKernels, GqaPackFeedsTheFusedAttentionAndUnpackIsItsTranspose) {
  const int64_t b = 2, t = 37, h = 6, d = 6;
  for (int64_t kv : {1, 2, 3, 6}) {
    Vec q = random_vec(b * t * h * d, 11), k = random_vec(b * t * kv * d, 12), v = random_vec(b * t * kv * d, 13);
    Vec qkv(b * t * 3 * h * d), out(b * t * h * d), lse(b * h * t);
    be.gqa_pack(qkv.data(), q.data(), k.data(), v.data(), b, t, h, kv, d);
    be.attention_forward(out.data(), lse.data(), qkv.data(), b, t, h * d, h);
    expect_close(out, gqa_attention_ref(q, k, v, b, t, h, kv, d), 1e-5, 1e-6, "gqa attention kv " + std::to_string(kv));
    // <pack(q,k,v), G> = <q,dq> + <k,dk> + <v,dv>
    Vec g = random_vec(qkv.size(), 14), dq(q.size(), 7.f), dk(k.size(), 7.f), dv(v.size(), 7.f);
    be.gqa_unpack(dq.data(), dk.data(), dv.data(), g.data(), b, t, h, kv, d);
    const double lhs = dot(qkv, g), rhs = dot(q, dq) + dot(k, dk) + dot(v, dv);
    EXPECT_NEAR(lhs, rhs, 1e-4 * std::fabs(lhs) + 1e-4) << "kv " << kv;
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, LlamaKernels, ::testing::Values(1, 3));

}  // namespace
