// The dtype contract of the CPU backend: every kernel that reads weights or
// GEMM inputs, fed bf16 or f16, against the fp32 kernel. Two checks each:
//  - exact: the 16-bit kernel gives the fp32 kernel's bits on the widened
//    (16-bit-rounded) inputs, i.e. arithmetic is fp32 and widening is exact;
//  - tolerance: against the fp32 kernel on the unrounded inputs, within the
//    error the rounding of the inputs allows (unit roundoff u = 2^-8 for bf16,
//    2^-11 for f16; bounds stated next to each test).
// Odd sizes, 1 and 3 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <random>
#include <string>
#include <vector>

#include "cpu_backend.hpp"
#include "weft/half.hpp"

namespace {

using weft::CpuBackend;
using weft::DType;
using weft::TypedPtr;
using Vec = std::vector<float>;
using Half = std::vector<uint16_t>;

Vec random_vec(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Vec v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

Half narrow(const Vec& v, DType dtype) {
  Half h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = dtype == DType::BF16 ? weft::float_to_bf16(v[i]) : weft::float_to_f16(v[i]);
  return h;
}

Vec widen(const Half& h, DType dtype) {
  Vec v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = dtype == DType::BF16 ? weft::bf16_to_float(h[i]) : weft::f16_to_float(h[i]);
  return v;
}

// Unit roundoff of a dtype's round to nearest.
double roundoff(DType dtype) { return dtype == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11); }

void expect_bits(const Vec& got, const Vec& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && ++misses <= 5)
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs fp32 kernel " << want[i];
  EXPECT_EQ(misses, 0) << what;
}

// |got - want| <= bound[i] for every element.
void expect_within(const Vec& got, const Vec& want, const std::vector<double>& bound, const std::string& what) {
  int misses = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= bound[i]) && ++misses <= 5)
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i] << " (bound " << bound[i] << ")";
  EXPECT_EQ(misses, 0) << what;
}

class DTypeKernels : public ::testing::TestWithParam<std::tuple<int, DType>> {
 protected:
  CpuBackend be{std::get<0>(GetParam())};
  DType dt = std::get<1>(GetParam());
};

// GEMM, every transpose, batched with strides and padded leading dimensions,
// A and B each fp32 or 16-bit. Tolerance: each product a*b of rounded inputs
// is off by at most (2u + u^2)|a||b|, so |C16 - C32| <= alpha (2u + u^2) sum|a||b|
// plus fp32 rounding of the sums (k * 2^-24 sum|a||b|, generous).
TEST_P(DTypeKernels, GemmMatchesFp32) {
  const int64_t m = 7, n = 5, k = 13, batch = 2;
  uint32_t seed = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int which = 1; which <= 3; ++which) {  // bit 0: A is 16-bit, bit 1: B is 16-bit
        const bool a16 = which & 1, b16 = which & 2;
        const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
        const int64_t lda = a_cols + 2, ldb = b_cols + 1, ldc = n + 3;
        const int64_t sa = a_rows * lda + 1, sb = b_rows * ldb + 2, sc = m * ldc;
        Vec a = random_vec(sa * batch, seed++), b = random_vec(sb * batch, seed++), c0 = random_vec(sc * batch, seed++);
        Half ah = narrow(a, dt), bh = narrow(b, dt);
        Vec aw = a16 ? widen(ah, dt) : a, bw = b16 ? widen(bh, dt) : b;
        weft::GemmArgs g;
        g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k, g.alpha = 0.5f, g.beta = 1.f;
        g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.batch = batch, g.stride_a = sa, g.stride_b = sb, g.stride_c = sc;
        auto run = [&](TypedPtr pa, TypedPtr pb) {
          Vec c = c0;
          g.a = pa, g.b = pb, g.c = c.data();
          be.gemm(g);
          return c;
        };
        const std::string what = std::string("gemm ") + (ta ? "T" : "N") + (tb ? "T" : "N") + " " +
                                 (a16 ? weft::dtype_name(dt) : "f32") + " x " + (b16 ? weft::dtype_name(dt) : "f32");
        Vec got = run(a16 ? TypedPtr(ah.data(), dt) : TypedPtr(a.data()), b16 ? TypedPtr(bh.data(), dt) : TypedPtr(b.data()));
        expect_bits(got, run(aw.data(), bw.data()), what + " (exact)");
        Vec fp32 = run(a.data(), b.data());
        std::vector<double> bound(got.size(), 0.0);
        const double u = roundoff(dt);
        for (int64_t bi = 0; bi < batch; ++bi)
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double s = 0;
              for (int64_t p = 0; p < k; ++p)
                s += std::fabs(ta ? a[bi * sa + p * lda + i] : a[bi * sa + i * lda + p]) *
                     std::fabs(tb ? b[bi * sb + j * ldb + p] : b[bi * sb + p * ldb + j]);
              bound[bi * sc + i * ldc + j] = 0.5 * (2 * u + u * u + k * std::ldexp(1.0, -23)) * s + 1e-6;
            }
        expect_within(got, fp32, bound, what + " (tolerance)");
      }
}

// out += bias. Tolerance: |b16 - b| <= u|b|, plus one fp32 rounding of the sum.
TEST_P(DTypeKernels, AddBiasMatchesFp32) {
  const int64_t n = 9, o = 37;
  Vec out0 = random_vec(n * o, 1), bias = random_vec(o, 2, -3.f, 3.f);
  Half bh = narrow(bias, dt);
  Vec bw = widen(bh, dt);
  Vec got = out0, exact = out0, fp32 = out0;
  be.add_bias(got.data(), TypedPtr(bh.data(), dt), n, o);
  be.add_bias(exact.data(), bw.data(), n, o);
  be.add_bias(fp32.data(), bias.data(), n, o);
  expect_bits(got, exact, "add_bias (exact)");
  std::vector<double> bound(got.size());
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < o; ++j)
      bound[r * o + j] = roundoff(dt) * std::fabs(bias[j]) + std::ldexp(1.0, -23) * (std::fabs(fp32[r * o + j]) + 4);
  expect_within(got, fp32, bound, "add_bias (tolerance)");
}

// GeLU (tanh and erf forms) of a 16-bit input: forward and backward give the
// fp32 kernel's bits on the widened input (the tolerance against unrounded
// inputs is the function's own sensitivity, not the kernel's: not checked).
TEST_P(DTypeKernels, GeluOfSixteenBitInputsMatchesFp32OnWidenedInputs) {
  const int64_t n = 4099;  // chunks and vector tails
  const Vec x = random_vec(n, 3, -6.f, 6.f), dout = random_vec(n, 4);
  const Half xh = narrow(x, dt);
  const Vec xw = widen(xh, dt);
  for (bool erf : {false, true}) {
    Vec got(n), want(n), dgot(n), dwant(n);
    if (erf) {
      be.gelu_erf_forward(got.data(), TypedPtr(xh.data(), dt), n);
      be.gelu_erf_forward(want.data(), xw.data(), n);
      be.gelu_erf_backward(dgot.data(), TypedPtr(xh.data(), dt), dout.data(), n);
      be.gelu_erf_backward(dwant.data(), xw.data(), dout.data(), n);
    } else {
      be.gelu_forward(got.data(), TypedPtr(xh.data(), dt), n);
      be.gelu_forward(want.data(), xw.data(), n);
      be.gelu_backward(dgot.data(), TypedPtr(xh.data(), dt), dout.data(), n);
      be.gelu_backward(dwant.data(), xw.data(), dout.data(), n);
    }
    expect_bits(got, want, erf ? "gelu_erf_forward" : "gelu_forward");
    expect_bits(dgot, dwant, erf ? "gelu_erf_backward" : "gelu_backward");
  }
}

// Attention of a 16-bit q|k|v and, backward, a 16-bit output (what a 16-bit
// mode keeps): the fp32 kernel's bits on the widened inputs.
TEST_P(DTypeKernels, AttentionOfSixteenBitQkvMatchesFp32OnWidenedQkv) {
  const int64_t b = 2, t = 19, c = 24, h = 3, n = b * t;  // odd T, head size 8
  const Vec qkv = random_vec(n * 3 * c, 8, -2.f, 2.f), dout = random_vec(n * c, 9);
  const Half qh = narrow(qkv, dt);
  const Vec qw = widen(qh, dt);
  Vec out(n * c), lse(b * h * t), out_w(n * c), lse_w(b * h * t), dq(n * 3 * c), dq_w(n * 3 * c);
  be.attention_forward(out.data(), lse.data(), TypedPtr(qh.data(), dt), b, t, c, h);
  be.attention_forward(out_w.data(), lse_w.data(), qw.data(), b, t, c, h);
  expect_bits(out, out_w, "attention_forward out");
  expect_bits(lse, lse_w, "attention_forward lse");
  const Half oh = narrow(out, dt);
  const Vec ow = widen(oh, dt);
  be.attention_backward(dq.data(), dout.data(), TypedPtr(qh.data(), dt), TypedPtr(oh.data(), dt), lse.data(), b, t,
                        c, h);
  be.attention_backward(dq_w.data(), dout.data(), qw.data(), ow.data(), lse_w.data(), b, t, c, h);
  expect_bits(dq, dq_w, "attention_backward dqkv");
}

// SwiGLU of 16-bit gate and up (llama's MLP in a 16-bit mode): forward and
// backward give the fp32 kernel's bits on the widened inputs.
TEST_P(DTypeKernels, SwigluOfSixteenBitInputsMatchesFp32OnWidenedInputs) {
  const int64_t n = 4099;
  const Vec gate = random_vec(n, 5, -6.f, 6.f), up = random_vec(n, 6), dout = random_vec(n, 7);
  const Half gh = narrow(gate, dt), uh = narrow(up, dt);
  const Vec gw = widen(gh, dt), uw = widen(uh, dt);
  Vec got(n), want(n), dg_got(n), du_got(n), dg_want(n), du_want(n);
  be.swiglu_forward(got.data(), TypedPtr(gh.data(), dt), TypedPtr(uh.data(), dt), n);
  be.swiglu_forward(want.data(), gw.data(), uw.data(), n);
  be.swiglu_backward(dg_got.data(), du_got.data(), TypedPtr(gh.data(), dt), TypedPtr(uh.data(), dt), dout.data(), n);
  be.swiglu_backward(dg_want.data(), du_want.data(), gw.data(), uw.data(), dout.data(), n);
  expect_bits(got, want, "swiglu_forward");
  expect_bits(dg_got, dg_want, "swiglu_backward dgate");
  expect_bits(du_got, du_want, "swiglu_backward dup");
}

// LayerNorm forward with 16-bit weight and bias: out = xhat w + b, so the
// output moves by at most u(|xhat||w| + |b|) (+ fp32 roundings). Statistics
// (mean, rstd) do not depend on the weights: equal bits. Backward with a
// 16-bit weight: dx moves by a relative u-sized amount of the terms
// g = dout*w; dw and db do not read w (equal bits).
TEST_P(DTypeKernels, LayerNormMatchesFp32) {
  const int64_t n = 11, c = 53;
  Vec x = random_vec(n * c, 5, -2.f, 2.f), w = random_vec(c, 6, 0.5f, 1.5f), b = random_vec(c, 7);
  Half wh = narrow(w, dt), bh = narrow(b, dt);
  Vec ww = widen(wh, dt), bw = widen(bh, dt);
  Vec out16(n * c), outw(n * c), out32(n * c), m16(n), mw(n), m32(n), r16(n), rw(n), r32(n);
  be.layernorm_forward(out16.data(), m16.data(), r16.data(), x.data(), TypedPtr(wh.data(), dt), TypedPtr(bh.data(), dt),
                       n, c, 1e-5f);
  be.layernorm_forward(outw.data(), mw.data(), rw.data(), x.data(), ww.data(), bw.data(), n, c, 1e-5f);
  be.layernorm_forward(out32.data(), m32.data(), r32.data(), x.data(), w.data(), b.data(), n, c, 1e-5f);
  expect_bits(out16, outw, "layernorm_forward (exact)");
  expect_bits(m16, m32, "layernorm mean");
  expect_bits(r16, r32, "layernorm rstd");
  std::vector<double> bound(n * c);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < c; ++j) {
      const double xhat = (x[r * c + j] - m32[r]) * r32[r];
      bound[r * c + j] = roundoff(dt) * (std::fabs(xhat * w[j]) + std::fabs(b[j])) + 1e-6 * (1 + std::fabs(xhat));
    }
  expect_within(out16, out32, bound, "layernorm_forward (tolerance)");

  Vec dout = random_vec(n * c, 8);
  auto backward = [&](TypedPtr wp, Vec& dx, Vec& dw, Vec& db) {
    dx.assign(n * c, 0.f), dw.assign(c, 0.f), db.assign(c, 0.f);
    be.layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), wp, m32.data(), r32.data(), n, c);
  };
  Vec dx16, dw16, db16, dxw, dww, dbw, dx32, dw32, db32;
  backward(TypedPtr(wh.data(), dt), dx16, dw16, db16);
  backward(ww.data(), dxw, dww, dbw);
  backward(w.data(), dx32, dw32, db32);
  expect_bits(dx16, dxw, "layernorm_backward dx (exact)");
  expect_bits(dw16, dw32, "layernorm_backward dw");
  expect_bits(db16, db32, "layernorm_backward db");
  // dx = rstd (g - mean g - xhat mean(g xhat)): each term of g moves by u|g|.
  for (int64_t r = 0; r < n; ++r) {
    double sum_g = 0;
    for (int64_t j = 0; j < c; ++j) sum_g += std::fabs(dout[r * c + j] * w[j]);
    for (int64_t j = 0; j < c; ++j) {
      const double xhat = std::fabs((x[r * c + j] - m32[r]) * r32[r]);
      bound[r * c + j] = r32[r] * roundoff(dt) * (std::fabs(dout[r * c + j] * w[j]) + (1 + xhat * 4) * sum_g / c) + 1e-5;
    }
  }
  expect_within(dx16, dx32, bound, "layernorm_backward dx (tolerance)");
}

// The norms' 16-bit input x (what 16-bit modes keep for backward): forward
// and backward give the fp32 kernels' bits on x widened, statistics
// included. Tolerance of the forward against the unrounded x: with x_i off by
// at most u|x_i|, the mean moves by <= u mean|x|, and xhat_j by at most
// rstd u (|x_j| + mean|x|) from the centred value plus |xhat_j| times the
// relative change of rstd, <= rstd^2 u mean(|x - m| (|x| + mean|x|)).
TEST_P(DTypeKernels, NormsOfSixteenBitInputsMatchFp32OnWidenedInputs) {
  const int64_t n = 13, c = 37;
  Vec x = random_vec(n * c, 21, -2.f, 2.f), w = random_vec(c, 22, 0.5f, 1.5f), b = random_vec(c, 23);
  Vec dout = random_vec(n * c, 24);
  Half xh = narrow(x, dt);
  Vec xw = widen(xh, dt);
  const TypedPtr x16(xh.data(), dt);

  Vec out16(n * c), outw(n * c), out32(n * c), m16(n), mw(n), m32(n), r16(n), rw(n), r32(n);
  be.layernorm_forward(out16.data(), m16.data(), r16.data(), x16, w.data(), b.data(), n, c, 1e-5f);
  be.layernorm_forward(outw.data(), mw.data(), rw.data(), xw.data(), w.data(), b.data(), n, c, 1e-5f);
  be.layernorm_forward(out32.data(), m32.data(), r32.data(), x.data(), w.data(), b.data(), n, c, 1e-5f);
  expect_bits(out16, outw, "layernorm_forward, 16-bit x");
  expect_bits(m16, mw, "layernorm mean, 16-bit x");
  expect_bits(r16, rw, "layernorm rstd, 16-bit x");
  std::vector<double> bound(n * c);
  const double u = roundoff(dt);
  for (int64_t r = 0; r < n; ++r) {
    double mean_abs = 0, spread = 0;
    for (int64_t j = 0; j < c; ++j) mean_abs += std::fabs(x[r * c + j]) / c;
    for (int64_t j = 0; j < c; ++j)
      spread += std::fabs(x[r * c + j] - m32[r]) * (std::fabs(x[r * c + j]) + mean_abs) / c;
    for (int64_t j = 0; j < c; ++j) {
      const double xhat = (x[r * c + j] - m32[r]) * r32[r];
      const double dxhat = r32[r] * u * (std::fabs(x[r * c + j]) + mean_abs) +
                           std::fabs(xhat) * r32[r] * r32[r] * u * spread;
      bound[r * c + j] = 1.01 * std::fabs(w[j]) * dxhat + 1e-6 * (1 + std::fabs(xhat));
    }
  }
  expect_within(out16, out32, bound, "layernorm_forward, 16-bit x (tolerance)");

  Vec dx16(n * c, 0.f), dw16(c, 0.f), db16(c, 0.f), dxw(n * c, 0.f), dww(c, 0.f), dbw(c, 0.f);
  be.layernorm_backward(dx16.data(), dw16.data(), db16.data(), dout.data(), x16, w.data(), m16.data(), r16.data(), n,
                        c);
  be.layernorm_backward(dxw.data(), dww.data(), dbw.data(), dout.data(), xw.data(), w.data(), mw.data(), rw.data(), n,
                        c);
  expect_bits(dx16, dxw, "layernorm_backward dx, 16-bit x");
  expect_bits(dw16, dww, "layernorm_backward dw, 16-bit x");
  expect_bits(db16, dbw, "layernorm_backward db, 16-bit x");

  Vec y16(n * c), yw(n * c), rs16(n), rsw(n);
  be.rmsnorm_forward(y16.data(), rs16.data(), x16, w.data(), n, c, 1e-6f);
  be.rmsnorm_forward(yw.data(), rsw.data(), xw.data(), w.data(), n, c, 1e-6f);
  expect_bits(y16, yw, "rmsnorm_forward, 16-bit x");
  expect_bits(rs16, rsw, "rmsnorm rstd, 16-bit x");
  Vec g16(n * c), gw(n * c), dwn16(c, 0.f), dwnw(c, 0.f);
  be.rmsnorm_backward(g16.data(), dwn16.data(), dout.data(), x16, w.data(), rs16.data(), n, c);
  be.rmsnorm_backward(gw.data(), dwnw.data(), dout.data(), xw.data(), w.data(), rsw.data(), n, c);
  expect_bits(g16, gw, "rmsnorm_backward dx, 16-bit x");
  expect_bits(dwn16, dwnw, "rmsnorm_backward dw, 16-bit x");
}

// Embedding rows of a 16-bit table (this rank's shard [first, first + rows)):
// the rows widened exactly, ids off the shard give 0; vs fp32 within u|table|.
TEST_P(DTypeKernels, EmbeddingMatchesFp32) {
  const int64_t rows = 23, c = 19, first = 4, n = 17;
  Vec table = random_vec(rows * c, 9);
  Half th = narrow(table, dt);
  Vec tw = widen(th, dt);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7) % (rows + 8));  // some off-shard
  Vec got(n * c, 7.f), exact(n * c, 7.f), fp32(n * c, 7.f);
  be.embedding_forward(got.data(), ids.data(), TypedPtr(th.data(), dt), n, c, first, rows);
  be.embedding_forward(exact.data(), ids.data(), tw.data(), n, c, first, rows);
  be.embedding_forward(fp32.data(), ids.data(), table.data(), n, c, first, rows);
  expect_bits(got, exact, "embedding_forward (exact)");
  std::vector<double> bound(n * c);
  for (int64_t i = 0; i < n * c; ++i) bound[i] = roundoff(dt) * std::fabs(fp32[i]);
  expect_within(got, fp32, bound, "embedding_forward (tolerance)");
}

// x cast to `dtype` by the backend, and that cast back to f32.
std::pair<Half, Vec> cast_both_ways(CpuBackend& backend, const Vec& x, DType dtype) {
  const int64_t n = static_cast<int64_t>(x.size());
  weft::Tensor src = backend.alloc({n}, DType::F32, weft::MemCategory::Workspace);
  weft::Tensor mid = backend.alloc({n}, dtype, weft::MemCategory::Workspace);
  weft::Tensor back = backend.alloc({n}, DType::F32, weft::MemCategory::Workspace);
  backend.copy_from_host(src, x.data());
  backend.cast(mid, src);
  backend.cast(back, mid);
  std::pair<Half, Vec> out{Half(n), Vec(n)};
  backend.copy_to_host(out.first.data(), mid);
  backend.copy_to_host(out.second.data(), back);
  return out;
}

TEST_P(DTypeKernels, CastRoundTripAndSupport) {
  EXPECT_TRUE(be.supports_compute_dtype(dt));
  EXPECT_TRUE(be.supports_compute_dtype(DType::F32));
  EXPECT_FALSE(be.supports_compute_dtype(DType::I32));
  // cast f32 -> 16-bit -> f32 equals the scalar round to nearest even, odd length.
  const Vec x = random_vec(100003, 11, -1000.f, 1000.f);
  expect_bits(cast_both_ways(be, x, dt).second, widen(narrow(x, dt), dt), "cast round trip");
}

// The vector conversions (AVX2 for bf16, F16C for f16) against the scalar
// ones of weft/half.hpp, bit for bit, in both directions: NaN (signalling
// and quiet, both signs), infinities, zeros, subnormals, ties at the rounding
// boundary, overflow to inf, and random bit patterns; lengths that leave
// tails of every size. Also the baseline build (vector kernels off).
TEST_P(DTypeKernels, CastMatchesTheScalarConversionsBitForBit) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7f800001u, 0xff800001u,
                                0x7fc00000u, 0xffffffffu, 0x7fffffffu, 0x00000001u, 0x807fffffu, 0x3f808000u,
                                0x3f818000u, 0x3f80c000u, 0x7f7fffffu, 0xff7fffffu, 0x477ff000u, 0x477fefffu,
                                0x38800000u, 0x33800000u, 0x33000001u, 0x3f800000u, 0xbf7fff80u};
  std::mt19937 gen(5);
  while (bits.size() < 4099) bits.push_back(static_cast<uint32_t>(gen()));
  for (bool vector_kernels : {true, false}) {
    CpuBackend backend(std::get<0>(GetParam()), vector_kernels);
    for (int64_t n : {int64_t{4099}, int64_t{16}, int64_t{15}, int64_t{7}, int64_t{1}}) {
      Vec x(n);
      std::memcpy(x.data(), bits.data(), n * sizeof(float));
      const auto [got16, back] = cast_both_ways(backend, x, dt);
      const Half want16 = narrow(x, dt);
      const std::string what = std::string(vector_kernels ? "vector" : "baseline") + " n " + std::to_string(n);
      int misses = 0;
      for (int64_t i = 0; i < n; ++i)
        if (got16[i] != want16[i] && ++misses <= 5)
          ADD_FAILURE() << what << ": f32 bits " << std::hex << bits[i] << " -> " << got16[i] << ", scalar "
                        << want16[i];
      EXPECT_EQ(misses, 0) << what;
      expect_bits(back, widen(want16, dt), what + " widening");
    }
  }
}

// accumulate_rounded (16-bit gradient buffers): every element becomes the
// scalar round to nearest even of (widened acc + x), summed in fp32, with the
// vector conversions and without, lengths with tails of every size; planted:
// a sum that overflows f16 (inf), a NaN, an x below half an ulp of acc (acc
// unchanged). An f32 acc gets plain accumulate's bits.
TEST_P(DTypeKernels, AccumulateRoundedRoundsEachSumOnce) {
  for (bool vector_kernels : {true, false}) {
    CpuBackend backend(std::get<0>(GetParam()), vector_kernels);
    for (int64_t n : {int64_t{100003}, int64_t{257}, int64_t{15}, int64_t{4}}) {
      Vec acc = random_vec(n, 21, -4.f, 4.f), x = random_vec(n, 22);
      acc[0] = 60000.f, x[0] = 60000.f;  // f16: inf
      x[1] = NAN;
      acc[2] = 3.f, x[2] = 4e-4f;  // under half an ulp of 3 in both dtypes (f16 2^-10, bf16 2^-7)
      const Half before = narrow(acc, dt);
      weft::Tensor t = backend.alloc({n}, dt, weft::MemCategory::Grad);
      backend.copy_from_host(t, before.data());
      backend.accumulate_rounded(t, x.data());
      Half got(n);
      backend.copy_to_host(got.data(), t);
      const Vec wide_before = widen(before, dt);
      Vec sum(n);
      for (int64_t i = 0; i < n; ++i) sum[i] = wide_before[i] + x[i];  // fp32
      const Half want = narrow(sum, dt);
      const std::string what = std::string(vector_kernels ? "vector" : "baseline") + " n " + std::to_string(n);
      int misses = 0;
      for (int64_t i = 0; i < n; ++i)
        if (got[i] != want[i] && ++misses <= 5)
          ADD_FAILURE() << what << "[" << i << "]: " << std::hex << got[i] << " vs " << want[i];
      EXPECT_EQ(misses, 0) << what;
      EXPECT_EQ(got[2], before[2]) << what;
      EXPECT_TRUE(std::isnan(widen(got, dt)[1])) << what;
      if (dt == DType::F16) EXPECT_TRUE(std::isinf(widen(got, dt)[0])) << what;

      Vec acc32 = acc, plain = acc;  // f32: accumulate's bits
      weft::Tensor t32 = backend.alloc({n}, DType::F32, weft::MemCategory::Grad);
      backend.copy_from_host(t32, acc32.data());
      backend.accumulate_rounded(t32, x.data());
      backend.copy_to_host(acc32.data(), t32);
      backend.accumulate(plain.data(), x.data(), n);
      expect_bits(acc32, plain, what + " f32");
    }
  }
}

// sum_squares of 16-bit values: exactly the fp64 sum of squares of their
// widened copy (the same fixed blocks), for lengths across block boundaries.
TEST_P(DTypeKernels, SumSquaresOfSixteenBitValuesEqualsTheirWidenedCopy) {
  for (int64_t n : {int64_t{100003}, int64_t{4097}, int64_t{4096}, int64_t{5}, int64_t{0}}) {
    const Half h = narrow(random_vec(static_cast<size_t>(n), 31, -3.f, 3.f), dt);
    const Vec w = widen(h, dt);
    double reference = 0;  // naive fp64
    for (float v : w) reference += static_cast<double>(v) * v;
    const double got = be.sum_squares(TypedPtr(h.data(), dt), n);
    EXPECT_EQ(got, be.sum_squares(w.data(), n)) << n;
    EXPECT_NEAR(got, reference, 1e-12 * (1 + reference)) << n;
  }
}

// zero: every byte 0 in a buffer of any dtype, inf and NaN included.
TEST_P(DTypeKernels, ZeroClearsEveryByte) {
  for (DType d : {dt, DType::F32}) {
    const int64_t n = 5003;
    weft::Tensor t = be.alloc({n}, d, weft::MemCategory::Grad);
    std::vector<unsigned char> ones(t.bytes(), 0xFF);  // NaN in every dtype
    be.copy_from_host(t, ones.data());
    be.zero(t);
    std::vector<unsigned char> got(t.bytes(), 1);
    be.copy_to_host(got.data(), t);
    EXPECT_EQ(std::count(got.begin(), got.end(), 0), static_cast<long>(got.size())) << weft::dtype_name(d);
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, DTypeKernels,
                         ::testing::Combine(::testing::Values(1, 3), ::testing::Values(DType::BF16, DType::F16)),
                         [](const auto& info) {
                           return "t" + std::to_string(std::get<0>(info.param)) + "_" +
                                  weft::dtype_name(std::get<1>(info.param));
                         });

}  // namespace
