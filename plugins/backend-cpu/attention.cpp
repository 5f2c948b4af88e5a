// The CPU backend's fused causal attention (online softmax forward, tiled
// backward from the saved log-sum-exp), with document masks and dropout.
#include "cpu_kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "weft/rng.hpp"

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

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

void CpuBackend::attention_forward(float* out, float* lse, TypedPtr qkv_in, int64_t b, int64_t t, int64_t c,
                                   int64_t h, const AttentionMask& mask) {
  OpTimer timer(profile_.get(), kOpAttnFwd);
  const AttnShape a = attn_shape(b, t, c, h, mask);
  Tensor wide;
  const float* qkv = widen(qkv_in, b * t * 3 * c, wide);  // [B,T,3C] fp32
  const int64_t nq = (t + kAttnTileQ - 1) / kAttnTileQ;
  pool_.parallel_for(b * h * nq, 1, [&](int64_t task0, int64_t task1) {
    if (avx2_) return attn_forward_tasks_avx2(a, out, lse, qkv, task0, task1);
    attn_forward_tasks_generic(a, out, lse, qkv, task0, task1);
  });
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, TypedPtr qkv_in, TypedPtr out_in,
                                    const float* lse, int64_t b, int64_t t, int64_t c, int64_t h,
                                    const AttentionMask& mask) {
  OpTimer timer(profile_.get(), kOpAttnBwd);
  const AttnShape a = attn_shape(b, t, c, h, mask);
  Tensor wide, wide_out;
  const float* qkv = widen(qkv_in, b * t * 3 * c, wide);  // [B,T,3C] fp32
  const float* out = widen(out_in, b * t * c, wide_out);  // [B,T,C] fp32
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

}  // namespace weft
