// CPU backend kernels against naive double-precision references, with 1 and 3
// threads, on seeded random inputs of odd sizes.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/dll/shared_library.hpp>
#include <filesystem>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <tuple>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cpu_backend.hpp"
#include "weft/error.hpp"
#include "weft/plugin.hpp"
#include "weft/rng.hpp"

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

DVec to_double(const Vec& v) { return DVec(v.begin(), v.end()); }

// |got - want| <= abs + rel * |want| for every element; reports the first misses.
void expect_close(const Vec& got, const DVec& want, double rel, double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= abs + rel * std::fabs(want[i]))) {
      if (++misses <= 5) {
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i] << " (err " << err << ")";
      }
    }
  }
  EXPECT_EQ(misses, 0) << what << ": " << misses << " of " << got.size() << " elements out of tolerance";
}

constexpr double kRel = 1e-5;
constexpr double kAbs = 1e-6;

// Parameters: thread count, and whether the AVX2 kernels may run (false: the
// baseline loops, so both builds of every kernel meet the references).
class CpuBackendTest : public ::testing::TestWithParam<std::tuple<int, bool>> {
 protected:
  CpuBackend be{std::get<0>(GetParam()), std::get<1>(GetParam())};
};

// ---------------------------------------------------------------------------
// Thread pool

TEST_P(CpuBackendTest, ParallelForCoversEveryIndexOnce) {
  EXPECT_EQ(be.threads(), std::get<0>(GetParam()));
  for (int64_t n : {0, 1, 7, 100, 1001, 100003}) {
    for (int64_t grain : {1, 16, 5000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (auto& h : hits) h = 0;
      be.pool().parallel_for(n, grain, [&](int64_t b, int64_t e) {
        ASSERT_LE(0, b);
        ASSERT_LT(b, e);
        ASSERT_LE(e, n);
        for (int64_t i = b; i < e; ++i) hits[i]++;
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
    }
  }
}

TEST_P(CpuBackendTest, ParallelForNestsAndRethrows) {
  std::atomic<int64_t> total{0};
  be.pool().parallel_for(10, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      be.pool().parallel_for(10, 1, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
    }
  });
  EXPECT_EQ(total.load(), 100);
  EXPECT_THROW(be.pool().parallel_for(100, 1,
                                      [&](int64_t b, int64_t) {
                                        if (b == 0) throw weft::Error("boom");
                                      }),
               weft::Error);
  // Still usable after an exception.
  total = 0;
  be.pool().parallel_for(1000, 1, [&](int64_t b, int64_t e) { total += e - b; });
  EXPECT_EQ(total.load(), 1000);
}

// ---------------------------------------------------------------------------
// GEMM

TEST_P(CpuBackendTest, GemmAllTransposesBatchedStrided) {
  const int64_t m = 5, n = 7, k = 9, batch = 3;
  uint32_t seed = 10;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      // Row-major storage with padded leading dimensions.
      const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
      const int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
      const int64_t lda = a_cols + 3, ldb = b_cols + 2, ldc = n + 1;
      const int64_t sa = a_rows * lda + 4, sb = b_rows * ldb + 1, sc = m * ldc + 5;
      Vec a = random_vec(sa * batch, seed++), b = random_vec(sb * batch, seed++), c = random_vec(sc * batch, seed++);
      const float alpha = 0.75f, beta = -0.5f;
      DVec want = to_double(c);
      for (int64_t bi = 0; bi < batch; ++bi) {
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double s = 0.0;
            for (int64_t p = 0; p < k; ++p) {
              const double av = ta ? a[bi * sa + p * lda + i] : a[bi * sa + i * lda + p];
              const double bv = tb ? b[bi * sb + j * ldb + p] : b[bi * sb + p * ldb + j];
              s += av * bv;
            }
            double& cv = want[bi * sc + i * ldc + j];
            cv = alpha * s + beta * cv;
          }
        }
      }
      weft::GemmArgs g;
      g.trans_a = ta;
      g.trans_b = tb;
      g.m = m, g.n = n, g.k = k;
      g.alpha = alpha, g.beta = beta;
      g.a = a.data(), g.lda = lda, g.b = b.data(), g.ldb = ldb, g.c = c.data(), g.ldc = ldc;
      g.batch = batch, g.stride_a = sa, g.stride_b = sb, g.stride_c = sc;
      be.gemm(g);
      // Padding elements (outside the m x n windows) must be untouched: want keeps them.
      expect_close(c, want, kRel, kAbs, std::string("gemm ta=") + (ta ? "1" : "0") + " tb=" + (tb ? "1" : "0"));
    }
  }
}

TEST_P(CpuBackendTest, GemmBetaZeroIgnoresOldC) {
  const int64_t m = 3, n = 4, k = 2;
  Vec a = random_vec(m * k, 1), b = random_vec(k * n, 2);
  Vec c(m * n, std::numeric_limits<float>::quiet_NaN());
  weft::GemmArgs g;
  g.m = m, g.n = n, g.k = k, g.a = a.data(), g.lda = k, g.b = b.data(), g.ldb = n, g.c = c.data(), g.ldc = n;
  be.gemm(g);
  DVec want(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) want[i * n + j] += static_cast<double>(a[i * k + p]) * b[p * n + j];
  expect_close(c, want, kRel, kAbs, "gemm beta=0");
}

// ---------------------------------------------------------------------------
// Bias, layernorm, gelu

TEST_P(CpuBackendTest, AddBiasAndBiasGrad) {
  for (auto [n, o] : {std::pair<int64_t, int64_t>{1, 1}, {5, 13}, {37, 70}, {300, 129}}) {
    Vec out = random_vec(n * o, 3), bias = random_vec(o, 4);
    DVec want = to_double(out);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < o; ++j) want[r * o + j] += bias[j];
    be.add_bias(out.data(), bias.data(), n, o);
    expect_close(out, want, kRel, kAbs, "add_bias");

    Vec dout = random_vec(n * o, 5), dbias = random_vec(o, 6);
    DVec want_db = to_double(dbias);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < o; ++j) want_db[j] += dout[r * o + j];
    be.bias_grad(dbias.data(), dout.data(), n, o);
    expect_close(dbias, want_db, kRel, kAbs, "bias_grad");
  }
}

struct LnRef {
  DVec out, mean, rstd;
};

LnRef layernorm_ref(const DVec& x, const DVec& w, const DVec& b, int64_t n, int64_t c, double eps) {
  LnRef r{DVec(n * c), DVec(n), DVec(n)};
  for (int64_t i = 0; i < n; ++i) {
    double mu = 0.0, var = 0.0;
    for (int64_t j = 0; j < c; ++j) mu += x[i * c + j];
    mu /= c;
    for (int64_t j = 0; j < c; ++j) var += (x[i * c + j] - mu) * (x[i * c + j] - mu);
    var /= c;
    const double rs = 1.0 / std::sqrt(var + eps);
    for (int64_t j = 0; j < c; ++j) r.out[i * c + j] = (x[i * c + j] - mu) * rs * w[j] + b[j];
    r.mean[i] = mu;
    r.rstd[i] = rs;
  }
  return r;
}

// Analytic layernorm gradient in double: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w.
void layernorm_backward_ref(DVec& dx, DVec& dw, DVec& db, const DVec& dout, const DVec& x, const DVec& w,
                            int64_t n, int64_t c, double eps) {
  const LnRef f = layernorm_ref(x, w, DVec(c, 0.0), n, c, eps);
  for (int64_t i = 0; i < n; ++i) {
    double mg = 0.0, mgx = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      const double xhat = (x[i * c + j] - f.mean[i]) * f.rstd[i];
      const double g = dout[i * c + j] * w[j];
      mg += g;
      mgx += g * xhat;
      dw[j] += dout[i * c + j] * xhat;
      db[j] += dout[i * c + j];
    }
    mg /= c;
    mgx /= c;
    for (int64_t j = 0; j < c; ++j) {
      const double xhat = (x[i * c + j] - f.mean[i]) * f.rstd[i];
      dx[i * c + j] += f.rstd[i] * (dout[i * c + j] * w[j] - mg - xhat * mgx);
    }
  }
}

TEST_P(CpuBackendTest, LayerNormForwardBackward) {
  const float eps = 1e-5f;
  for (auto [n, c] : {std::pair<int64_t, int64_t>{1, 12}, {7, 12}, {37, 33}, {65, 96}}) {
    Vec x = random_vec(n * c, 20, -2.f, 3.f), w = random_vec(c, 21, 0.5f, 1.5f), b = random_vec(c, 22);
    Vec out(n * c), mean(n), rstd(n);
    be.layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n, c, eps);
    const LnRef f = layernorm_ref(to_double(x), to_double(w), to_double(b), n, c, eps);
    expect_close(out, f.out, kRel, kAbs, "layernorm out");
    expect_close(mean, f.mean, kRel, kAbs, "layernorm mean");
    expect_close(rstd, f.rstd, kRel, kAbs, "layernorm rstd");

    // Backward accumulates onto existing values.
    Vec dout = random_vec(n * c, 23), dx = random_vec(n * c, 24), dw = random_vec(c, 25), db = random_vec(c, 26);
    DVec wdx = to_double(dx), wdw = to_double(dw), wdb = to_double(db);
    layernorm_backward_ref(wdx, wdw, wdb, to_double(dout), to_double(x), to_double(w), n, c, eps);
    be.layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), n, c);
    expect_close(dx, wdx, kRel, kAbs, "layernorm dx");
    expect_close(dw, wdw, kRel, kAbs, "layernorm dw");
    expect_close(db, wdb, kRel, kAbs, "layernorm db");
  }
}

double gelu_ref(double x) {
  const double s = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(s * (x + 0.044715 * x * x * x)));
}

TEST_P(CpuBackendTest, Gelu) {
  const int64_t n = 70001;
  Vec x = random_vec(n, 30, -6.f, 6.f);
  x[0] = 0.f, x[1] = -10.f, x[2] = 10.f;
  Vec out(n), dx(n, 123.f), dout = random_vec(n, 31);
  be.gelu_forward(out.data(), x.data(), n);
  DVec want(n), want_dx(n);
  for (int64_t i = 0; i < n; ++i) {
    want[i] = gelu_ref(x[i]);
    // Central difference of the double forward: checks the derivative formula independently.
    const double hstep = 1e-5;
    want_dx[i] = (gelu_ref(x[i] + hstep) - gelu_ref(x[i] - hstep)) / (2 * hstep) * dout[i];
  }
  expect_close(out, want, kRel, kAbs, "gelu");
  be.gelu_backward(dx.data(), x.data(), dout.data(), n);  // overwrites dx
  expect_close(dx, want_dx, kRel, 1e-6, "gelu dx");
}

// ---------------------------------------------------------------------------
// Attention

struct AttnRef {
  DVec out, lse;
};

// Naive causal attention with a full softmax per row, in double.
AttnRef attention_ref(const DVec& qkv, int64_t B, int64_t T, int64_t C, int64_t H) {
  const int64_t hs = C / H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  AttnRef r{DVec(B * T * C, 0.0), DVec(B * H * T, 0.0)};
  auto at = [&](int64_t b, int64_t t, int64_t part, int64_t h, int64_t d) {
    return qkv[(b * T + t) * 3 * C + part * C + h * hs + d];
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        DVec s(i + 1);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < hs; ++d) dot += at(b, i, 0, h, d) * at(b, j, 1, h, d);
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0.0;
        for (int64_t j = 0; j <= i; ++j) z += std::exp(s[j] - mx);
        for (int64_t j = 0; j <= i; ++j) {
          const double p = std::exp(s[j] - mx) / z;
          for (int64_t d = 0; d < hs; ++d) r.out[(b * T + i) * C + h * hs + d] += p * at(b, j, 2, h, d);
        }
        r.lse[(b * H + h) * T + i] = mx + std::log(z);
      }
    }
  }
  return r;
}

// Naive attention gradient in double from the full probability matrix.
DVec attention_backward_ref(const DVec& dout, const DVec& qkv, int64_t B, int64_t T, int64_t C, int64_t H) {
  const int64_t hs = C / H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  DVec g(B * T * 3 * C, 0.0);
  auto idx = [&](int64_t b, int64_t t, int64_t part, int64_t h, int64_t d) {
    return (b * T + t) * 3 * C + part * C + h * hs + d;
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        DVec p(i + 1), dp(i + 1);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < hs; ++d) dot += qkv[idx(b, i, 0, h, d)] * qkv[idx(b, j, 1, h, d)];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        double z = 0.0;
        for (int64_t j = 0; j <= i; ++j) z += std::exp(p[j] - mx);
        double pdp = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] = std::exp(p[j] - mx) / z;
          double dot = 0.0;
          for (int64_t d = 0; d < hs; ++d) dot += dout[(b * T + i) * C + h * hs + d] * qkv[idx(b, j, 2, h, d)];
          dp[j] = dot;
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (int64_t d = 0; d < hs; ++d) {
            g[idx(b, j, 2, h, d)] += p[j] * dout[(b * T + i) * C + h * hs + d];
            g[idx(b, i, 0, h, d)] += ds * qkv[idx(b, j, 1, h, d)];
            g[idx(b, j, 1, h, d)] += ds * qkv[idx(b, i, 0, h, d)];
          }
        }
      }
    }
  }
  return g;
}

TEST(CpuBackendReference, AttentionBackwardRefMatchesFiniteDifferences) {
  const int64_t B = 1, T = 5, C = 6, H = 2;
  Vec qf = random_vec(B * T * 3 * C, 40), df = random_vec(B * T * C, 41);
  DVec qkv = to_double(qf), dout = to_double(df);
  const DVec g = attention_backward_ref(dout, qkv, B, T, C, H);
  auto loss = [&](const DVec& q) {
    const AttnRef r = attention_ref(q, B, T, C, H);
    double s = 0.0;
    for (size_t i = 0; i < r.out.size(); ++i) s += r.out[i] * dout[i];
    return s;
  };
  for (size_t i = 0; i < qkv.size(); ++i) {
    DVec p = qkv, m = qkv;
    p[i] += 1e-6;
    m[i] -= 1e-6;
    EXPECT_NEAR(g[i], (loss(p) - loss(m)) / 2e-6, 1e-7) << i;
  }
}

TEST(CpuBackendReference, LayerNormBackwardRefMatchesFiniteDifferences) {
  const int64_t n = 3, c = 5;
  const double eps = 1e-5;
  DVec x = to_double(random_vec(n * c, 42)), w = to_double(random_vec(c, 43)), dout = to_double(random_vec(n * c, 44));
  DVec dx(n * c, 0.0), dw(c, 0.0), db(c, 0.0);
  layernorm_backward_ref(dx, dw, db, dout, x, w, n, c, eps);
  auto loss = [&](const DVec& xx, const DVec& ww) {
    const LnRef r = layernorm_ref(xx, ww, DVec(c, 0.0), n, c, eps);
    double s = 0.0;
    for (size_t i = 0; i < r.out.size(); ++i) s += r.out[i] * dout[i];
    return s;
  };
  for (size_t i = 0; i < x.size(); ++i) {
    DVec p = x, m = x;
    p[i] += 1e-6;
    m[i] -= 1e-6;
    EXPECT_NEAR(dx[i], (loss(p, w) - loss(m, w)) / 2e-6, 1e-6) << i;
  }
  for (int64_t j = 0; j < c; ++j) {
    DVec p = w, m = w;
    p[j] += 1e-6;
    m[j] -= 1e-6;
    EXPECT_NEAR(dw[j], (loss(x, p) - loss(x, m)) / 2e-6, 1e-6) << j;
  }
}

struct AttnCase {
  int64_t b, t, c, h;
};

TEST_P(CpuBackendTest, AttentionForwardBackward) {
  uint32_t seed = 50;
  for (AttnCase k : {AttnCase{1, 1, 12, 3}, AttnCase{2, 7, 12, 3}, AttnCase{2, 37, 12, 3}, AttnCase{2, 65, 12, 3},
                     AttnCase{1, 100, 64, 2}}) {
    const std::string tag = "B=" + std::to_string(k.b) + " T=" + std::to_string(k.t) + " C=" + std::to_string(k.c) +
                            " H=" + std::to_string(k.h);
    Vec qkv = random_vec(k.b * k.t * 3 * k.c, seed++, -2.f, 2.f);
    Vec out(k.b * k.t * k.c, 7.f), lse(k.b * k.h * k.t, 7.f);
    be.attention_forward(out.data(), lse.data(), qkv.data(), k.b, k.t, k.c, k.h);
    const AttnRef r = attention_ref(to_double(qkv), k.b, k.t, k.c, k.h);
    expect_close(out, r.out, kRel, kAbs, "attention out " + tag);
    expect_close(lse, r.lse, kRel, kAbs, "attention lse " + tag);

    Vec dout = random_vec(out.size(), seed++);
    Vec dqkv(qkv.size(), std::numeric_limits<float>::quiet_NaN());  // overwritten
    be.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), k.b, k.t, k.c, k.h);
    const DVec g = attention_backward_ref(to_double(dout), to_double(qkv), k.b, k.t, k.c, k.h);
    expect_close(dqkv, g, kRel, 2e-6, "attention dqkv " + tag);
  }
}

// Document masks: attention over a batch whose rows hold several documents
// equals the plain causal kernel run on each document alone.
TEST_P(CpuBackendTest, AttentionDocumentsEqualEachDocumentAlone) {
  const int64_t B = 2, T = 70, C = 12, H = 3;  // 70 tokens cross query and key tiles of 32
  const std::vector<std::vector<int64_t>> starts = {{0, 5, 33, 40, 69}, {0, 64}};  // document starts per row
  std::vector<int32_t> doc_start(B * T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      int64_t s = 0;
      for (int64_t st : starts[b]) if (st <= i) s = st;
      doc_start[b * T + i] = static_cast<int32_t>(s);
    }
  Vec qkv = random_vec(B * T * 3 * C, 90, -2.f, 2.f), dout = random_vec(B * T * C, 91);
  Vec out(B * T * C), lse(B * H * T), dqkv(qkv.size(), std::numeric_limits<float>::quiet_NaN());
  weft::AttentionMask mask;
  mask.doc_start = doc_start.data();
  be.attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, H, mask);
  be.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, H, mask);
  for (int64_t b = 0; b < B; ++b) {
    for (size_t d = 0; d < starts[b].size(); ++d) {
      const int64_t s = starts[b][d], e = d + 1 < starts[b].size() ? starts[b][d + 1] : T, n = e - s;
      const std::string tag = "row " + std::to_string(b) + " document [" + std::to_string(s) + ", " + std::to_string(e) + ")";
      Vec q1(qkv.begin() + (b * T + s) * 3 * C, qkv.begin() + (b * T + e) * 3 * C);
      Vec do1(dout.begin() + (b * T + s) * C, dout.begin() + (b * T + e) * C);
      Vec o1(n * C), l1(H * n), g1(q1.size());
      be.attention_forward(o1.data(), l1.data(), q1.data(), 1, n, C, H);
      be.attention_backward(g1.data(), do1.data(), q1.data(), o1.data(), l1.data(), 1, n, C, H);
      expect_close(Vec(out.begin() + (b * T + s) * C, out.begin() + (b * T + e) * C), to_double(o1), kRel, kAbs,
                   "out " + tag);
      expect_close(Vec(dqkv.begin() + (b * T + s) * 3 * C, dqkv.begin() + (b * T + e) * 3 * C), to_double(g1), kRel,
                   2e-6, "dqkv " + tag);
      for (int64_t h = 0; h < H; ++h)
        expect_close(Vec(lse.begin() + (b * H + h) * T + s, lse.begin() + (b * H + h) * T + e),
                     to_double(Vec(l1.begin() + h * n, l1.begin() + (h + 1) * n)), kRel, kAbs, "lse " + tag);
    }
  }
}

// Attention-probability dropout against a naive double reference that draws
// the mask from weft::dropout_keep with the documented element index.
TEST_P(CpuBackendTest, AttentionDropoutMatchesNaiveReference) {
  const int64_t B = 2, T = 37, C = 8, H = 2, hs = C / H;
  const float p = 0.3f;
  weft::AttentionMask mask;
  mask.dropout = p;
  mask.dropout_key = weft::dropout_site_key(7, "blocks.0.attn.core_dropout");
  mask.first_sample = 11;
  mask.first_head = 2;  // as the second of two tensor-parallel ranks
  Vec qkv = random_vec(B * T * 3 * C, 92, -2.f, 2.f), dout = random_vec(B * T * C, 93);
  Vec out(B * T * C), lse(B * H * T), dqkv(qkv.size());
  be.attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, H, mask);
  be.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, H, mask);
  const DVec q = to_double(qkv);
  auto at = [&](int64_t b, int64_t t, int64_t part, int64_t h, int64_t d) { return (b * T + t) * 3 * C + part * C + h * hs + d; };
  DVec ro(out.size(), 0.0), rg(qkv.size(), 0.0);
  int64_t dropped = 0, total = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        DVec pr(i + 1), keep(i + 1), dpp(i + 1);
        double mx = -1e300, z = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < hs; ++d) dot += q[at(b, i, 0, h, d)] * q[at(b, j, 1, h, d)];
          pr[j] = dot / std::sqrt(double(hs));
          mx = std::max(mx, pr[j]);
        }
        for (int64_t j = 0; j <= i; ++j) z += std::exp(pr[j] - mx);
        double pdp = 0;
        for (int64_t j = 0; j <= i; ++j) {
          pr[j] = std::exp(pr[j] - mx) / z;
          const uint64_t index = static_cast<uint64_t>(((2 + h) * T + i) * T + j);
          keep[j] = weft::dropout_keep(mask.dropout_key, 11 + b, index, p) ? 1.0 / (1.0 - p) : 0.0;
          dropped += keep[j] == 0.0;
          ++total;
          double dot = 0;
          for (int64_t d = 0; d < hs; ++d) {
            ro[(b * T + i) * C + h * hs + d] += keep[j] * pr[j] * q[at(b, j, 2, h, d)];
            dot += dout[(b * T + i) * C + h * hs + d] * q[at(b, j, 2, h, d)];
          }
          dpp[j] = keep[j] * dot;  // dL/dP = keep * dL/dP'
          pdp += pr[j] * dpp[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double ds = pr[j] * (dpp[j] - pdp) / std::sqrt(double(hs));
          for (int64_t d = 0; d < hs; ++d) {
            rg[at(b, j, 2, h, d)] += keep[j] * pr[j] * dout[(b * T + i) * C + h * hs + d];
            rg[at(b, i, 0, h, d)] += ds * q[at(b, j, 1, h, d)];
            rg[at(b, j, 1, h, d)] += ds * q[at(b, i, 0, h, d)];
          }
        }
      }
  EXPECT_GT(dropped, total / 5);  // about 30% of the probabilities dropped
  EXPECT_LT(dropped, total * 2 / 5);
  expect_close(out, ro, kRel, kAbs, "attention dropout out");
  expect_close(dqkv, rg, kRel, 2e-6, "attention dropout dqkv");
}

// The empirical drop rate of a large tensor is within 3 sigma of p; kept
// elements are scaled by 1/(1-p); the mask depends on the site, not on how the
// sequence is cut (sequence parallelism) or on the call.
TEST_P(CpuBackendTest, DropoutRateAndMask) {
  const int64_t B = 4, T = 64, C = 1024, n = B * T * C;
  const float p = 0.1f;
  const uint64_t key = weft::dropout_site_key(1234, "blocks.0.mlp.dropout");
  Vec x(n, 1.f);
  be.dropout(x.data(), B, T, C, weft::DropoutArgs{p, key, 40, 0});
  int64_t zeros = 0;
  for (float v : x) {
    if (v == 0.f) ++zeros;
    else ASSERT_FLOAT_EQ(v, 1.f / (1.f - p));
  }
  const double rate = double(zeros) / double(n), sigma = std::sqrt(p * (1 - p) / double(n));
  EXPECT_LT(std::fabs(rate - p), 3 * sigma) << "drop rate " << rate << " over " << n << " elements";
  // The same elements in two halves of the sequence (t0 = 0 and T/2).
  Vec halves(n, 1.f), y(B * (T / 2) * C);
  for (int64_t part = 0; part < 2; ++part) {
    for (int64_t b = 0; b < B; ++b)
      std::copy(halves.begin() + (b * T + part * T / 2) * C, halves.begin() + (b * T + part * T / 2 + T / 2) * C,
                y.begin() + b * (T / 2) * C);
    be.dropout(y.data(), B, T / 2, C, weft::DropoutArgs{p, key, 40, part * T / 2});
    for (int64_t b = 0; b < B; ++b)
      std::copy(y.begin() + b * (T / 2) * C, y.begin() + (b + 1) * (T / 2) * C,
                halves.begin() + (b * T + part * T / 2) * C);
  }
  EXPECT_EQ(halves, x);
  // Another site or another sample drops other elements.
  Vec other(n, 1.f), shifted(n, 1.f);
  be.dropout(other.data(), B, T, C, weft::DropoutArgs{p, weft::dropout_site_key(1234, "blocks.0.attn.dropout"), 40, 0});
  be.dropout(shifted.data(), B, T, C, weft::DropoutArgs{p, key, 41, 0});
  EXPECT_NE(other, x);
  EXPECT_TRUE(std::equal(shifted.begin(), shifted.begin() + (B - 1) * T * C, x.begin() + T * C));  // sample 41 = row 1
}

TEST_P(CpuBackendTest, GeluErf) {
  const int64_t n = 70001;
  Vec x = random_vec(n, 94, -6.f, 6.f);
  x[0] = 0.f, x[1] = -10.f, x[2] = 10.f;
  Vec out(n), dx(n, 123.f), dout = random_vec(n, 95);
  auto ref = [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); };
  DVec want(n), want_dx(n);
  for (int64_t i = 0; i < n; ++i) {
    want[i] = ref(x[i]);
    want_dx[i] = (ref(x[i] + 1e-5) - ref(x[i] - 1e-5)) / 2e-5 * dout[i];  // central difference
  }
  be.gelu_erf_forward(out.data(), x.data(), n);
  expect_close(out, want, kRel, kAbs, "gelu erf");
  be.gelu_erf_backward(dx.data(), x.data(), dout.data(), n);
  expect_close(dx, want_dx, kRel, 1e-6, "gelu erf dx");
}

// ---------------------------------------------------------------------------
// Embedding, cross-entropy

TEST_P(CpuBackendTest, Embedding) {
  const int64_t vocab = 11, c = 37, n = 50;
  Vec table = random_vec(vocab * c, 60);
  std::vector<int32_t> ids(n);
  std::mt19937 gen(61);
  for (auto& id : ids) id = static_cast<int32_t>(gen() % 4);  // many repeats
  ids[3] = 10;
  Vec out(n * c);
  be.embedding_forward(out.data(), ids.data(), table.data(), n, c, 0, vocab);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < c; ++j) ASSERT_EQ(out[r * c + j], table[ids[r] * c + j]);

  // A shard of rows [2, 7): other ids give zero rows, forward and backward.
  Vec part(n * c, 9.f);
  be.embedding_forward(part.data(), ids.data(), table.data() + 2 * c, n, c, 2, 5);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < c; ++j)
      ASSERT_EQ(part[r * c + j], ids[r] >= 2 && ids[r] < 7 ? table[ids[r] * c + j] : 0.f) << r;

  Vec dtable = random_vec(vocab * c, 62), dout = random_vec(n * c, 63);
  DVec want = to_double(dtable);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < c; ++j) want[ids[r] * c + j] += dout[r * c + j];
  Vec dshard(dtable.begin() + 2 * c, dtable.begin() + 7 * c);
  be.embedding_backward(dtable.data(), ids.data(), dout.data(), n, c, 0, vocab);
  expect_close(dtable, want, kRel, kAbs, "embedding dtable");
  be.embedding_backward(dshard.data(), ids.data(), dout.data(), n, c, 2, 5);
  expect_close(dshard, DVec(want.begin() + 2 * c, want.begin() + 7 * c), kRel, kAbs, "embedding dtable shard");
}

// Softmax cross-entropy in double over the first v of vp columns: losses[N]
// and dloss_scale * (softmax - onehot) (0 in padded columns and ignored rows).
void xent_reference(const Vec& logits, const std::vector<int32_t>& targets, int64_t n, int64_t v, int64_t vp,
                    float dscale, DVec& want_loss, DVec& want_d) {
  want_loss.assign(n, 0.0);
  want_d.assign(n * vp, 0.0);
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] < 0) continue;
    double mx = -1e300;
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, static_cast<double>(logits[r * vp + j]));
    double z = 0.0;
    for (int64_t j = 0; j < v; ++j) z += std::exp(logits[r * vp + j] - mx);
    want_loss[r] = mx + std::log(z) - logits[r * vp + targets[r]];
    for (int64_t j = 0; j < v; ++j)
      want_d[r * vp + j] = dscale * (std::exp(logits[r * vp + j] - mx) / z - (j == targets[r] ? 1.0 : 0.0));
  }
}

TEST_P(CpuBackendTest, CrossEntropy) {
  const int64_t n = 5, v = 11, vp = 16;
  Vec logits = random_vec(n * vp, 70, -3.f, 3.f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = v; j < vp; ++j) logits[r * vp + j] = 1000.f;  // padded columns must not count
  logits[2 * vp + 4] = 80.f;                                         // stability: exp would overflow naively
  std::vector<int32_t> targets = {3, 0, 4, -1, 10};
  const float dscale = 0.37f;
  Vec losses(n, 9.f), dlogits(n * vp, 9.f);
  be.cross_entropy(losses.data(), dlogits.data(), logits.data(), targets.data(), n, v, vp, dscale);
  DVec want_loss, want_d;
  xent_reference(logits, targets, n, v, vp, dscale, want_loss, want_d);
  expect_close(losses, want_loss, kRel, kAbs, "cross_entropy losses");
  expect_close(dlogits, want_d, kRel, kAbs, "cross_entropy dlogits");
  EXPECT_EQ(losses[3], 0.f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = v; j < vp; ++j) EXPECT_EQ(dlogits[r * vp + j], 0.f) << r << "," << j;

  // Without a gradient buffer.
  Vec losses2(n, 9.f);
  be.cross_entropy(losses2.data(), nullptr, logits.data(), targets.data(), n, v, vp, dscale);
  expect_close(losses2, want_loss, kRel, kAbs, "cross_entropy losses (no grad)");
}

// The three vocabulary-parallel passes over shards of Vs columns, with the
// reductions between them done here as the tp group would (max, sums), give the
// fused kernel's double reference: losses on every shard, each shard's slice of
// dlogits (in place), 0 on padded columns and ignored rows. Shards 3 and 4 hold
// only padding or part of it (v = 11 of vp = 16 in shards of 4).
TEST_P(CpuBackendTest, CrossEntropyVocabShards) {
  const int64_t n = 5, v = 11, vp = 16, vs = 4, shards = vp / vs;
  Vec logits = random_vec(n * vp, 72, -3.f, 3.f);
  logits[2 * vp + 9] = 80.f;
  std::vector<int32_t> targets = {3, 0, 9, -1, 10};
  const float dscale = 0.37f;
  DVec want_loss, want_d;
  xent_reference(logits, targets, n, v, vp, dscale, want_loss, want_d);
  std::vector<Vec> part(shards, Vec(n * vs));
  for (int64_t s = 0; s < shards; ++s)
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < vs; ++j) part[s][r * vs + j] = logits[r * vp + s * vs + j];
  Vec row_max(n, -std::numeric_limits<float>::infinity()), target(n, 0.f), sum_exp(n, 0.f);
  for (int64_t s = 0; s < shards; ++s) {
    Vec mx(n), tl(n);
    be.xent_shard_max(mx.data(), tl.data(), part[s].data(), targets.data(), n, vs, s * vs, v);
    for (int64_t r = 0; r < n; ++r) row_max[r] = std::max(row_max[r], mx[r]), target[r] += tl[r];
  }
  for (int64_t s = 0; s < shards; ++s) {
    Vec se(n);
    be.xent_shard_sum_exp(se.data(), part[s].data(), row_max.data(), n, vs, s * vs, v);
    for (int64_t r = 0; r < n; ++r) sum_exp[r] += se[r];
  }
  for (int64_t s = 0; s < shards; ++s) {
    Vec losses(n, 9.f);
    be.xent_shard_finish(losses.data(), part[s].data(), part[s].data(), targets.data(), row_max.data(),
                         sum_exp.data(), target.data(), n, vs, s * vs, v, dscale);
    expect_close(losses, want_loss, kRel, kAbs, "vocab-parallel losses, shard " + std::to_string(s));
    DVec want_part(n * vs);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < vs; ++j) want_part[r * vs + j] = want_d[r * vp + s * vs + j];
    expect_close(part[s], want_part, kRel, kAbs, "vocab-parallel dlogits, shard " + std::to_string(s));
  }
}

// A wide vocabulary (the vector path with a tail) computed in place: dlogits
// is the logits buffer itself, as the GPT head calls it. Against a double
// reference; a NaN logit makes that row's loss NaN.
TEST_P(CpuBackendTest, CrossEntropyWideInPlace) {
  const int64_t n = 6, v = 1003, vp = 1024;
  Vec logits = random_vec(n * vp, 71, -8.f, 8.f);
  std::vector<int32_t> targets = {0, 1002, 517, -1, 8, 999};
  const float dscale = 1.f / 384.f;
  DVec want_loss, want_d;
  xent_reference(logits, targets, n, v, vp, dscale, want_loss, want_d);
  Vec losses(n, 9.f), inplace = logits;
  be.cross_entropy(losses.data(), inplace.data(), inplace.data(), targets.data(), n, v, vp, dscale);
  expect_close(losses, want_loss, kRel, kAbs, "cross_entropy losses (in place)");
  expect_close(inplace, want_d, kRel, 1e-9, "cross_entropy dlogits (in place)");
  for (int64_t j = v; j < vp; ++j) EXPECT_EQ(inplace[j], 0.f) << j;

  Vec bad = logits;
  bad[2 * vp + 40] = std::numeric_limits<float>::quiet_NaN();
  be.cross_entropy(losses.data(), nullptr, bad.data(), targets.data(), n, v, vp, dscale);
  EXPECT_TRUE(std::isnan(losses[2]));
  EXPECT_FALSE(std::isnan(losses[1]));
}

// ---------------------------------------------------------------------------
// Elementwise, reductions, AdamW

TEST_P(CpuBackendTest, ElementwiseAndReductions) {
  for (int64_t n : {1, 7, 4097, 100003}) {
    Vec a = random_vec(n, 80), b = random_vec(n, 81), out(n);
    be.add(out.data(), a.data(), b.data(), n);
    DVec want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = static_cast<double>(a[i]) + b[i];
    expect_close(out, want, kRel, kAbs, "add");

    Vec acc = a;
    be.accumulate(acc.data(), b.data(), n);
    expect_close(acc, want, kRel, kAbs, "accumulate");

    Vec s = a;
    be.scale(s.data(), -1.5f, n);
    for (int64_t i = 0; i < n; ++i) want[i] = -1.5 * a[i];
    expect_close(s, want, kRel, kAbs, "scale");

    Vec f = a;
    if (n > 0) f[n / 2] = std::numeric_limits<float>::quiet_NaN();
    be.fill(f.data(), 0.f, n);
    EXPECT_EQ(f, Vec(n, 0.f)) << "fill " << n;  // NaN cleared too
    be.fill(f.data(), 2.5f, n);
    EXPECT_EQ(f, Vec(n, 2.5f)) << "fill " << n;

    double sum = 0.0, sq = 0.0;
    for (float x : a) {
      sum += x;
      sq += static_cast<double>(x) * x;
    }
    EXPECT_NEAR(be.sum(a.data(), n), sum, 1e-9 * (1 + std::fabs(sum))) << n;
    EXPECT_NEAR(be.sum_squares(a.data(), n), sq, 1e-9 * (1 + sq)) << n;
  }
  EXPECT_EQ(be.sum(nullptr, 0), 0.0);
}

TEST_P(CpuBackendTest, AdamWSeveralSteps) {
  const int64_t n = 1001;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  Vec p = random_vec(n, 90), m(n, 0.f), v(n, 0.f);
  DVec pd = to_double(p), md(n, 0.0), vd(n, 0.0);
  for (int64_t step = 1; step <= 5; ++step) {
    Vec g = random_vec(n, 100 + static_cast<uint32_t>(step));
    const float gs = step % 2 ? 1.f : 0.3f;  // the clip factor, on every other step
    be.adamw(p.data(), g.data(), m.data(), v.data(), n, lr, b1, b2, eps, wd, step, gs);
    const double bc1 = 1.0 - std::pow(static_cast<double>(b1), step);
    const double bc2 = 1.0 - std::pow(static_cast<double>(b2), step);
    for (int64_t i = 0; i < n; ++i) {
      const double gi = static_cast<double>(gs) * g[i];
      md[i] = b1 * md[i] + (1.0 - b1) * gi;
      vd[i] = b2 * vd[i] + (1.0 - b2) * gi * gi;
      const double mhat = md[i] / bc1, vhat = vd[i] / bc2;
      pd[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * pd[i]);
    }
    expect_close(m, md, kRel, kAbs, "adamw m step " + std::to_string(step));
    expect_close(v, vd, kRel, kAbs, "adamw v step " + std::to_string(step));
    expect_close(p, pd, kRel, kAbs, "adamw p step " + std::to_string(step));
  }
}

// ---------------------------------------------------------------------------
// Casts

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Checks that h is the nearest 16-bit value to x (ties to even) by comparing
// with its neighbours in magnitude; decode maps bits to a float exactly.
template <class Decode>
void expect_nearest_even(float x, uint16_t h, uint16_t inf_bits, Decode decode, const char* what) {
  const uint16_t sign = h & 0x8000u, mag = h & 0x7fffu;
  ASSERT_EQ(sign != 0, std::signbit(x)) << what << " sign of " << x;
  if (mag == inf_bits) {  // rounding to infinity: x must be at least halfway past the largest finite
    const double big = decode(static_cast<uint16_t>(inf_bits - 1));
    const double next = 2.0 * big - static_cast<double>(decode(static_cast<uint16_t>(inf_bits - 2)));
    EXPECT_GE(std::fabs(static_cast<double>(x)), (big + next) / 2) << what << " " << x;
    return;
  }
  const double xv = x, y = decode(h);
  const double err = std::fabs(xv - y);
  for (int delta : {-1, 1}) {
    const int nm = static_cast<int>(mag) + delta;
    if (nm < 0 || nm > inf_bits) continue;
    const uint16_t nb = static_cast<uint16_t>(sign | nm);
    const double other = nm == inf_bits ? std::numeric_limits<double>::infinity() : decode(nb);
    const double e2 = std::fabs(xv - other);
    EXPECT_LE(err, e2) << what << " " << x << " -> " << h;
    if (err == e2) {
      EXPECT_EQ(mag & 1u, 0u) << what << " tie not to even: " << x;
    }
  }
}

TEST(CpuBackendCast, Bf16RoundsToNearestEven) {
  EXPECT_EQ(weft::float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(weft::float_to_bf16(1.0f + std::ldexp(1.f, -8)), 0x3f80);      // tie -> even (down)
  EXPECT_EQ(weft::float_to_bf16(1.0f + 3 * std::ldexp(1.f, -8)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(weft::float_to_bf16(-2.5f), 0xc020);
  EXPECT_TRUE(std::isnan(weft::bf16_to_float(weft::float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(weft::bf16_to_float(weft::float_to_bf16(std::numeric_limits<float>::infinity()))));
  std::mt19937 gen(110);
  auto dec = [](uint16_t h) { return static_cast<double>(weft::bf16_to_float(h)); };
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = gen() & (i % 2 ? 0xffffffffu : 0xffff8000u);  // every other one a tie or exact
    if ((u & 0x7f800000u) == 0x7f800000u) continue;                   // inf / NaN
    const float x = float_of(u);
    const uint16_t h = weft::float_to_bf16(x);
    expect_nearest_even(x, h, 0x7f80, dec, "bf16");
    if (HasFailure()) break;
    EXPECT_EQ(weft::float_to_bf16(weft::bf16_to_float(h)), h);
    EXPECT_EQ(bits_of(weft::bf16_to_float(h)), static_cast<uint32_t>(h) << 16);
  }
}

TEST(CpuBackendCast, F16AllValuesAndNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t e = (h >> 10) & 31u, mant = h & 1023u;
    const float f = weft::f16_to_float(static_cast<uint16_t>(h));
    if (e == 31) {
      if (mant == 0) {
        EXPECT_TRUE(std::isinf(f)) << h;
      } else {
        EXPECT_TRUE(std::isnan(f)) << h;
      }
      EXPECT_EQ(weft::float_to_f16(f) & 0x7c00u, 0x7c00u);
      continue;
    }
    const double mag = e == 0 ? std::ldexp(static_cast<double>(mant), -24)
                              : std::ldexp(static_cast<double>(1024 + mant), static_cast<int>(e) - 25);
    const double want = (h & 0x8000u) ? -mag : mag;
    ASSERT_EQ(static_cast<double>(f), want) << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << h;
    ASSERT_EQ(weft::float_to_f16(f), h) << "round trip of " << h;
  }
  EXPECT_EQ(weft::float_to_f16(1.0f + std::ldexp(1.f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(weft::float_to_f16(1.0f + 3 * std::ldexp(1.f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(weft::float_to_f16(65504.f), 0x7bff);
  EXPECT_EQ(weft::float_to_f16(65519.f), 0x7bff);
  EXPECT_EQ(weft::float_to_f16(65520.f), 0x7c00);
  EXPECT_EQ(weft::float_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(weft::float_to_f16(std::ldexp(1.f, -25)), 0x0000);  // tie with 2^-24 -> even (zero)
  EXPECT_EQ(weft::float_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(weft::float_to_f16(std::ldexp(2.5f, -24)), 0x0002);   // subnormal tie -> even (down)
  EXPECT_EQ(weft::float_to_f16(std::ldexp(3.5f, -24)), 0x0004);   // subnormal tie -> even (up)
  EXPECT_EQ(weft::float_to_f16(std::ldexp(-1023.5f, -24)), 0x8400);  // rounds up into the smallest normal
  std::mt19937 gen(111);
  auto dec = [](uint16_t h) { return static_cast<double>(weft::f16_to_float(h)); };
  std::uniform_int_distribution<int> exp_dist(-30, 17);
  for (int i = 0; i < 200000; ++i) {
    // Every other value keeps few mantissa bits, so ties are frequent.
    const uint32_t mant = gen() & (i % 2 ? 0x7fffffu : 0x7ff000u);
    const uint32_t e = static_cast<uint32_t>(127 + exp_dist(gen));
    const float x = float_of(((gen() & 1u) << 31) | (e << 23) | mant);
    expect_nearest_even(x, weft::float_to_f16(x), 0x7c00, dec, "f16");
    if (HasFailure()) break;
  }
}

TEST_P(CpuBackendTest, CastTensors) {
  const int64_t n = 40001;
  Vec x = random_vec(n, 120, -100.f, 100.f);
  weft::Tensor f32 = be.alloc({n}, weft::DType::F32, weft::MemCategory::Workspace);
  weft::Tensor bf = be.alloc({n}, weft::DType::BF16, weft::MemCategory::Workspace);
  weft::Tensor hf = be.alloc({n}, weft::DType::F16, weft::MemCategory::Workspace);
  weft::Tensor back = be.alloc({n}, weft::DType::F32, weft::MemCategory::Workspace);
  be.copy_from_host(f32, x.data());
  be.cast(bf, f32);
  be.cast(hf, f32);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(bf.data<uint16_t>()[i], weft::float_to_bf16(x[i])) << i;
    ASSERT_EQ(hf.data<uint16_t>()[i], weft::float_to_f16(x[i])) << i;
  }
  be.cast(back, bf);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(back.data<float>()[i], weft::bf16_to_float(bf.data<uint16_t>()[i]));
    ASSERT_NEAR(back.data<float>()[i], x[i], std::fabs(x[i]) * std::ldexp(1.0, -8)) << i;
  }
  be.cast(back, hf);
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(back.data<float>()[i], x[i], std::fabs(x[i]) * std::ldexp(1.0, -11)) << i;

  // Same dtype: a copy.
  weft::Tensor f32b = be.alloc({n}, weft::DType::F32, weft::MemCategory::Workspace);
  be.cast(f32b, f32);
  EXPECT_EQ(std::memcmp(f32b.raw(), x.data(), n * sizeof(float)), 0);
  weft::Tensor i1 = be.alloc({3}, weft::DType::I32, weft::MemCategory::Workspace);
  weft::Tensor i2 = be.alloc({3}, weft::DType::I32, weft::MemCategory::Workspace);
  i1.data<int32_t>()[1] = 42;
  be.cast(i2, i1);
  EXPECT_EQ(i2.data<int32_t>()[1], 42);

  // Unsupported pairs.
  weft::Tensor small_bf = be.alloc({3}, weft::DType::BF16, weft::MemCategory::Workspace);
  weft::Tensor small_hf = be.alloc({3}, weft::DType::F16, weft::MemCategory::Workspace);
  weft::Tensor small_f = be.alloc({3}, weft::DType::F32, weft::MemCategory::Workspace);
  EXPECT_THROW(be.cast(small_hf, small_bf), weft::Error);
  EXPECT_THROW(be.cast(small_f, i1), weft::Error);
  EXPECT_THROW(be.cast(i1, small_f), weft::Error);
}

// ---------------------------------------------------------------------------
// Memory

TEST_P(CpuBackendTest, AllocationAccountingAndCopies) {
  using weft::MemCategory;
  const int P = static_cast<int>(MemCategory::Param), G = static_cast<int>(MemCategory::Grad),
            A = static_cast<int>(MemCategory::Activation);
  {
    weft::Tensor p = be.alloc({3, 5}, weft::DType::F32, MemCategory::Param);
    EXPECT_EQ(p.numel(), 15);
    EXPECT_EQ(p.device(), weft::Device::Host);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p.raw()) % 64, 0u);
    for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(p.data<float>()[i], 0.f);
    weft::MemStats s = be.mem_stats();
    EXPECT_EQ(s.current[P], 60);
    EXPECT_EQ(s.peak[P], 60);
    EXPECT_EQ(s.current[G], 0);

    weft::Tensor g = be.alloc({7}, weft::DType::BF16, MemCategory::Grad);
    weft::Tensor a = be.alloc({2, 2}, weft::DType::F32, MemCategory::Activation);
    s = be.mem_stats();
    EXPECT_EQ(s.current[G], 14);
    EXPECT_EQ(s.current[A], 16);
    EXPECT_EQ(s.current[P], 60);

    // A view keeps the storage alive.
    weft::Tensor view = a.view(1, {3});
    a = weft::Tensor();
    EXPECT_EQ(be.mem_stats().current[A], 16);
    view = weft::Tensor();
    s = be.mem_stats();
    EXPECT_EQ(s.current[A], 0);
    EXPECT_EQ(s.peak[A], 16);

    // Copies.
    Vec src = random_vec(15, 130), dst(15);
    be.copy_from_host(p, src.data());
    be.copy_to_host(dst.data(), p);
    EXPECT_EQ(src, dst);
    weft::Tensor q = be.alloc({15}, weft::DType::F32, MemCategory::Param);
    be.copy(q, p);
    EXPECT_EQ(std::memcmp(q.raw(), src.data(), 60), 0);
    EXPECT_EQ(be.mem_stats().current[P], 120);
    be.synchronize();
  }
  weft::MemStats s = be.mem_stats();
  for (int i = 0; i < weft::kMemCategoryCount; ++i) EXPECT_EQ(s.current[i], 0) << i;
  EXPECT_EQ(s.peak[P], 120);
  EXPECT_EQ(s.peak[G], 14);
  be.reset_peak();
  s = be.mem_stats();
  EXPECT_EQ(s.peak[P], 0);
  weft::Tensor w = be.alloc({10}, weft::DType::F32, MemCategory::Workspace);
  weft::Tensor empty = be.alloc({0, 4}, weft::DType::F32, MemCategory::Workspace);
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(be.mem_stats().peak[static_cast<int>(MemCategory::Workspace)], 40);

  // Unfilled allocations: same alignment and accounting; a cached block comes
  // back as it was left (so the zero fill of alloc() is really skipped there).
  const int64_t big = (int64_t{1} << 20) / 4;  // 1 MiB: kept by the block cache
  {
    weft::Tensor u = be.alloc_uninitialized({big}, weft::DType::F32, MemCategory::Activation);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(u.raw()) % 64, 0u);
    EXPECT_EQ(be.mem_stats().current[A], big * 4);
    be.fill(u.data<float>(), 7.f, big);
  }
  EXPECT_EQ(be.mem_stats().current[A], 0);
  {
    weft::Tensor z = be.alloc({big}, weft::DType::F32, MemCategory::Activation);  // the same block, zeroed
    EXPECT_EQ(z.data<float>()[0], 0.f);
    EXPECT_EQ(z.data<float>()[big - 1], 0.f);
    be.fill(z.data<float>(), 7.f, big);
  }
  weft::Tensor u2 = be.alloc_uninitialized({big}, weft::DType::F32, MemCategory::Activation);
  EXPECT_EQ(u2.data<float>()[big - 1], 7.f);
}

TEST(CpuBackendMemory, ConcurrentAllocAndTensorOutlivingBackend) {
  auto be = std::make_unique<CpuBackend>(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&be] {
      for (int i = 0; i < 200; ++i) {
        weft::Tensor x = be->alloc({i + 1}, weft::DType::F32, weft::MemCategory::CommBuffer);
        x.data<float>()[i] = 1.f;
      }
    });
  }
  for (auto& t : threads) t.join();
  const int cb = static_cast<int>(weft::MemCategory::CommBuffer);
  EXPECT_EQ(be->mem_stats().current[cb], 0);
  EXPECT_GE(be->mem_stats().peak[cb], 800);
  EXPECT_LE(be->mem_stats().peak[cb], 4 * 800);
  weft::Tensor keep = be->alloc({5}, weft::DType::F32, weft::MemCategory::Param);
  be.reset();
  keep.data<float>()[4] = 2.f;
  keep = weft::Tensor();  // released after the backend is gone: must not crash
  SUCCEED();
}

// ---------------------------------------------------------------------------
// Determinism: results do not depend on the thread count.

TEST(CpuBackendDeterminism, SameBitsForOneAndThreeThreads) {
  CpuBackend one(1), three(3);
  const int64_t B = 2, T = 70, C = 48, H = 4, N = B * T;
  Vec qkv = random_vec(B * T * 3 * C, 140, -2.f, 2.f), dout = random_vec(B * T * C, 141);
  auto run_attention = [&](CpuBackend& be, Vec& out, Vec& lse, Vec& dqkv) {
    out.assign(B * T * C, 0.f);
    lse.assign(B * H * T, 0.f);
    dqkv.assign(qkv.size(), 0.f);
    be.attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, H);
    be.attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, H);
  };
  Vec o1, l1, d1, o3, l3, d3;
  run_attention(one, o1, l1, d1);
  run_attention(three, o3, l3, d3);
  EXPECT_EQ(o1, o3);
  EXPECT_EQ(l1, l3);
  EXPECT_EQ(d1, d3);

  Vec x = random_vec(N * C, 142), w = random_vec(C, 143), mean(N), rstd(N), out(N * C);
  one.layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), N, C, 1e-5f);
  auto ln_back = [&](CpuBackend& be, Vec& dx, Vec& dw, Vec& db) {
    dx.assign(N * C, 0.f);
    dw.assign(C, 0.f);
    db.assign(C, 0.f);
    be.layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), N, C);
  };
  Vec dx1, dw1, db1, dx3, dw3, db3;
  ln_back(one, dx1, dw1, db1);
  ln_back(three, dx3, dw3, db3);
  EXPECT_EQ(dx1, dx3);
  EXPECT_EQ(dw1, dw3);
  EXPECT_EQ(db1, db3);

  Vec big = random_vec(300007, 144);
  EXPECT_EQ(one.sum(big.data(), 300007), three.sum(big.data(), 300007));
  EXPECT_EQ(one.sum_squares(big.data(), 300007), three.sum_squares(big.data(), 300007));

  std::vector<int32_t> ids(N);
  for (int64_t i = 0; i < N; ++i) ids[i] = static_cast<int32_t>(i % 5);
  Vec t1(5 * C, 0.f), t3(5 * C, 0.f);
  one.embedding_backward(t1.data(), ids.data(), dout.data(), N, C, 0, 5);
  three.embedding_backward(t3.data(), ids.data(), dout.data(), N, C, 0, 5);
  EXPECT_EQ(t1, t3);
}

// ---------------------------------------------------------------------------
// The plugin module: handshake, schema and factory.

TEST(CpuBackendPlugin, RegistersBackendCpu) {
  const std::filesystem::path so = std::filesystem::path(WEFT_BUILD_ROOT) / "plugins" / "backend-cpu" /
                                   "libweft-backend-cpu.so";
  if (!std::filesystem::exists(so)) GTEST_SKIP() << "plugin module not built: " << so;
  boost::dll::shared_library lib(so.string());
  auto& get_info = lib.get_alias<const weft::PluginInfo*()>("weft_plugin_info");
  const weft::PluginInfo* info = get_info();
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->abi_version, weft::kAbiVersion);
  EXPECT_STREQ(info->family, "backend");
  EXPECT_STREQ(info->name, "cpu");
  EXPECT_STREQ(info->version, "0.1.0");
  {
    weft::Registry registry;
    info->register_factories(registry);
    const weft::FactoryRecord& rec = registry.get("backend", "cpu");
    ASSERT_EQ(rec.schema.size(), 3u);
    EXPECT_EQ(rec.schema[2].key, "peak_tflops");
    EXPECT_EQ(std::get<double>(rec.schema[2].default_value), 0.0);
    EXPECT_EQ(rec.schema[1].key, "kernels");
    EXPECT_EQ(std::get<std::string>(rec.schema[1].default_value), "auto");
    EXPECT_EQ(rec.schema[1].choices, (std::vector<std::string>{"auto", "generic"}));
    EXPECT_EQ(rec.schema[0].key, "threads");
    EXPECT_EQ(rec.schema[0].type, weft::OptType::Int);
    EXPECT_EQ(std::get<int64_t>(rec.schema[0].default_value), 0);
    EXPECT_EQ(rec.schema[0].min, 0.0);
    EXPECT_EQ(rec.schema[0].max, 1024.0);
    const auto& make = registry.factory<weft::Backend>("cpu");
    weft::BackendEnv env;
    env.cores = 2;
    std::map<std::string, weft::Options::Entry> auto_threads{{"threads", {weft::OptValue(int64_t{0}), {}}},
                                                             {"kernels", {weft::OptValue(std::string("auto")), {}}}};
    auto be = make(weft::Options("backend", auto_threads), env);
    EXPECT_EQ(be->name(), "cpu");
    EXPECT_EQ(be->device(), weft::Device::Host);
    EXPECT_EQ(be->threads(), 2);
    std::map<std::string, weft::Options::Entry> three{{"threads", {weft::OptValue(int64_t{3}), {}}},
                                                      {"kernels", {weft::OptValue(std::string("generic")), {}}}};
    auto generic = make(weft::Options("backend", three), env);
    EXPECT_EQ(generic->threads(), 3);
    EXPECT_FALSE(dynamic_cast<CpuBackend&>(*generic).vector_kernels());
    Vec a = {1.f, 2.f}, b = {3.f, 4.f}, out(2);
    be->add(out.data(), a.data(), b.data(), 2);
    EXPECT_EQ(out, (Vec{4.f, 6.f}));
  }  // the registry (and its factories) go before the library
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuBackendTest, ::testing::Combine(::testing::Values(1, 3), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& info) {
                           return "threads" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_vector" : "_generic");
                         });

}  // namespace
