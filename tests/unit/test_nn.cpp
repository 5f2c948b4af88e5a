// nn building blocks, parameter materialisation, the GPT model and the tp=1
// layer provider, on the CPU backend. Backward passes are checked against
// central finite differences of a scalar objective sum(y * r) (r fixed random).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cpu_backend.hpp"
#include "gpt.hpp"
#include "llama.hpp"
#include "megatron.hpp"
#include "weft/error.hpp"
#include "weft/half.hpp"
#include "weft/moe.hpp"
#include "weft/nn.hpp"
#include "weft/params.hpp"
#include "weft/rng.hpp"

using namespace weft;

namespace {

constexpr uint64_t kTestSeed = 20240611;
// Finite-difference step (five-point stencil, see derivative()).
constexpr float kEps = 1e-2f;


std::vector<float> to_host(Backend& be, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) be.copy_to_host(v.data(), t);
  return v;
}

Tensor to_device(Backend& be, const Shape& shape, const std::vector<float>& v) {
  Tensor t = be.alloc(shape, DType::F32, MemCategory::Workspace);
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  if (!v.empty()) be.copy_from_host(t, v.data());
  return t;
}

Tensor ids_to_device(Backend& be, const Shape& shape, const std::vector<int32_t>& v) {
  Tensor t = be.alloc(shape, DType::I32, MemCategory::Workspace);
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  if (!v.empty()) be.copy_from_host(t, v.data());
  return t;
}

std::vector<float> randn(size_t n, uint64_t stream, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = normal01(kTestSeed, stream, i) * scale;
  return v;
}

// Replaces the init values with random ones so that every term of every
// gradient matters (LayerNorm weights 1 + noise, biases noise, weights N(0, scale)).
void randomize(const std::vector<Param*>& params, Backend& be, float scale) {
  uint64_t stream = 1000;
  for (Param* p : params) {
    auto v = randn(static_cast<size_t>(p->data.numel()), stream++, scale);
    if (p->init == InitKind::Ones)
      for (float& x : v) x = 1.f + 0.5f * x;
    be.copy_from_host(p->data, v.data());
  }
}

std::vector<int64_t> sample_indices(int64_t n, int k, uint64_t stream) {
  std::set<int64_t> s;
  if (n <= k) {
    for (int64_t i = 0; i < n; ++i) s.insert(i);
  } else {
    s.insert(0);
    s.insert(n - 1);
    for (uint64_t j = 0; static_cast<int>(s.size()) < k; ++j)
      s.insert(std::min<int64_t>(n - 1, static_cast<int64_t>(uniform01(kTestSeed, stream, j) * n)));
  }
  return {s.begin(), s.end()};
}

Options options_from(const OptionSchema& schema, const std::string& section,
                     const std::map<std::string, OptValue>& overrides = {}) {
  std::map<std::string, Options::Entry> entries;
  for (const auto& spec : schema) entries[spec.key] = Options::Entry{spec.default_value, {}};
  for (const auto& [k, v] : overrides) entries[k] = Options::Entry{v, SourcePos{"test.toml", 3, 1}};
  return Options(section, std::move(entries));
}

// A chain of layers run as one network: forward in order, backward in reverse.
struct Net {
  Net(Backend& backend, std::vector<Module*> chain, Tensor loss_targets = {}, float scale = 1.f)
      : be(backend), layers(std::move(chain)), targets(std::move(loss_targets)), dloss_scale(scale) {}

  Backend& be;
  std::vector<Module*> layers;
  Tensor targets;          // set for a model whose last layer is a loss
  float dloss_scale = 1.f;
  std::vector<float> r;    // weights of the objective sum(y * r)

  Tensor forward(Context& ctx, const Tensor& x) {
    Tensor h = x;
    for (Module* m : layers) h = m->forward(ctx, h);
    return h;
  }
  Context make_ctx() {
    Context ctx(be, 0);
    ctx.targets = targets;
    ctx.dloss_scale = dloss_scale;
    return ctx;
  }
  double objective(const Tensor& x) {
    Context ctx = make_ctx();
    auto y = to_host(be, forward(ctx, x));
    if (r.empty()) {
      // A loss layer starts backward from dloss_scale: the objective is dloss_scale * sum(losses).
      r = targets.defined() ? std::vector<float>(y.size(), dloss_scale) : randn(y.size(), 77, 1.f);
    }
    double f = 0;
    for (size_t i = 0; i < y.size(); ++i) f += static_cast<double>(y[i]) * r[i];
    // Losses a module adds to the objective itself (mixture of experts), already weighted.
    for (const char* key : {"aux_loss", "z_loss"})
      if (ctx.stats.count(key)) f += ctx.stats.at(key);
    return f;
  }
  // Forward + backward (accumulating into the grads); returns dL/dx on the host (empty for ids).
  std::vector<float> backward(const Tensor& x) {
    Context ctx = make_ctx();
    Tensor y = forward(ctx, x);
    Tensor d = to_device(be, y.shape(), r);
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) d = (*it)->backward(ctx, d);
    return d.defined() ? to_host(be, d) : std::vector<float>{};
  }
};

struct Tolerance {
  double rel = 2e-2;
  double abs = 1e-3;
};

void expect_close(double analytic, double numeric, const Tolerance& tol, const std::string& what) {
  const double bound = tol.rel * std::max(std::abs(analytic), std::abs(numeric)) + tol.abs;
  EXPECT_NEAR(analytic, numeric, bound) << what;
}

// d objective / d v[i] by central differences: the five-point stencil
// (-f(+2h) + 8f(+h) - 8f(-h) + f(-2h)) / 12h, whose O(h^4) error lets h be
// large enough that the fp32 rounding of the forward pass stays small.
double derivative(std::vector<float>& v, int64_t i, float h, const std::function<double()>& objective) {
  const float orig = v[i];
  auto at = [&](float delta) {
    v[i] = orig + delta;
    const double f = objective();
    v[i] = orig;
    return f;
  };
  return (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12.0 * h);
}

// Checks the input gradient (when x is f32) and a sample of every param's gradient.
void check_gradients(Net& net, Tensor x, const std::vector<Param*>& params, FlatParams& flat, float eps,
                     int samples, Tolerance tol = {}) {
  Backend& be = net.be;
  net.objective(x);  // fixes r
  zero_grads(flat, be);
  const std::vector<float> dx = net.backward(x);
  uint64_t stream = 500;

  if (x.dtype() == DType::F32) {
    ASSERT_EQ(dx.size(), static_cast<size_t>(x.numel()));
    auto xh = to_host(be, x);
    for (int64_t i : sample_indices(x.numel(), samples, stream++)) {
      const double fd = derivative(xh, i, eps, [&] {
        be.copy_from_host(x, xh.data());
        return net.objective(x);
      });
      be.copy_from_host(x, xh.data());
      expect_close(dx[i], fd, tol, "input[" + std::to_string(i) + "]");
    }
  } else {
    EXPECT_TRUE(dx.empty()) << "token inputs have no gradient";
  }

  for (Param* p : params) {
    const auto g = to_host(be, p->grad);
    auto d = to_host(be, p->data);
    for (int64_t i : sample_indices(p->data.numel(), samples, stream++)) {
      const double fd = derivative(d, i, eps, [&] {
        be.copy_from_host(p->data, d.data());
        return net.objective(x);
      });
      be.copy_from_host(p->data, d.data());
      expect_close(g[i], fd, tol, p->name + "[" + std::to_string(i) + "]");
    }
  }
}

std::vector<Param*> params_of(Module& m) {
  std::vector<Param*> out;
  m.collect_params(out);
  return out;
}

gpt::GptConfig tiny_gpt_config() {
  gpt::GptConfig c;
  c.layers = 2;
  c.hidden = 12;
  c.heads = 3;
  c.seq_length = 5;
  c.vocab = 11;
  c.padded_vocab = 16;
  c.init_std = 0.02f;
  return c;
}

class NnTest : public ::testing::Test {
 protected:
  CpuBackend be{2};
  nn::SerialLayerProvider serial;
};

// ---------------------------------------------------------------- Linear

TEST_F(NnTest, LinearForwardMatchesReference) {
  nn::Linear lin("lin", 5, 4);
  auto params = params_of(lin);
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0]->name, "lin.weight");
  EXPECT_EQ(params[0]->full_shape, (Shape{4, 5}));
  EXPECT_EQ(params[1]->name, "lin.bias");
  EXPECT_FALSE(params[1]->weight_decay);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.5f);
  auto w = to_host(be, params[0]->data), b = to_host(be, params[1]->data);
  auto xh = randn(2 * 3 * 5, 1, 1.f);
  Tensor x = to_device(be, {2, 3, 5}, xh);
  Context ctx(be, 0);
  Tensor y = lin.forward(ctx, x);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  auto yh = to_host(be, y);
  for (int n = 0; n < 6; ++n)
    for (int o = 0; o < 4; ++o) {
      double ref = b[o];
      for (int i = 0; i < 5; ++i) ref += static_cast<double>(xh[n * 5 + i]) * w[o * 5 + i];
      EXPECT_NEAR(yh[n * 4 + o], ref, 1e-5) << n << "," << o;
    }
}

TEST_F(NnTest, LinearBackwardMatchesFiniteDifferences) {
  nn::Linear lin("lin", 5, 4);
  auto params = params_of(lin);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.5f);
  Tensor x = to_device(be, {2, 3, 5}, randn(30, 2, 1.f));
  Net net{be, {&lin}};
  check_gradients(net, x, params, flat, kEps, 12);
}

TEST_F(NnTest, LinearWithoutBiasMatchesFiniteDifferences) {
  nn::Linear lin("lin", 6, 3, /*bias=*/false);
  auto params = params_of(lin);
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(lin.bias(), nullptr);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.5f);
  Tensor x = to_device(be, {4, 6}, randn(24, 3, 1.f));
  Net net{be, {&lin}};
  check_gradients(net, x, params, flat, kEps, 12);
}

// ---------------------------------------------------------------- LayerNorm

TEST_F(NnTest, LayerNormMatchesFiniteDifferences) {
  nn::LayerNorm ln("ln", 8);
  auto params = params_of(ln);
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0]->name, "ln.weight");
  EXPECT_EQ(params[0]->init, InitKind::Ones);
  EXPECT_FALSE(params[0]->weight_decay);
  EXPECT_EQ(params[1]->name, "ln.bias");
  EXPECT_EQ(params[1]->init, InitKind::Zeros);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.5f);
  Tensor x = to_device(be, {2, 3, 8}, randn(48, 4, 1.f));
  Net net{be, {&ln}};
  check_gradients(net, x, params, flat, kEps, 16);
}

// ---------------------------------------------------------------- Embedding

TEST_F(NnTest, EmbeddingMatchesFiniteDifferences) {
  nn::Embedding emb("emb", 7, 4);
  auto params = params_of(emb);
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params[0]->name, "emb.weight");
  EXPECT_EQ(params[0]->full_shape, (Shape{7, 4}));
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.5f);
  // Repeated ids: their gradients must add up.
  Tensor ids = ids_to_device(be, {2, 3}, {3, 1, 3, 6, 0, 3});
  {
    Context ctx(be, 0);
    auto y = to_host(be, emb.forward(ctx, ids));
    auto table = to_host(be, params[0]->data);
    EXPECT_EQ(y[1 * 4 + 2], table[1 * 4 + 2]);
    EXPECT_EQ(y[3 * 4 + 0], table[6 * 4 + 0]);
  }
  Net net{be, {&emb}};
  check_gradients(net, ids, params, flat, kEps, 28);
}

// ---------------------------------------------------------------- attention, MLP, Block

TEST_F(NnTest, AttentionMatchesFiniteDifferences) {
  nn::CausalSelfAttention attn("attn", 12, 3, serial, 0.02f, 0.01f);
  auto params = params_of(attn);
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0]->name, "attn.qkv.weight");
  EXPECT_EQ(params[0]->full_shape, (Shape{36, 12}));
  EXPECT_EQ(params[2]->name, "attn.proj.weight");
  EXPECT_FLOAT_EQ(params[2]->init_std, 0.01f);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.4f);
  Tensor x = to_device(be, {2, 5, 12}, randn(120, 5, 1.f));
  Net net{be, {&attn}};
  check_gradients(net, x, params, flat, kEps, 16);
}

TEST_F(NnTest, AttentionIsCausal) {
  nn::CausalSelfAttention attn("attn", 8, 2, serial);
  auto params = params_of(attn);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.4f);
  auto xh = randn(1 * 4 * 8, 6, 1.f);
  Context c1(be, 0), c2(be, 1);
  auto y1 = to_host(be, attn.forward(c1, to_device(be, {1, 4, 8}, xh)));
  for (int i = 3 * 8; i < 4 * 8; ++i) xh[i] += 1.f;  // change only the last position
  auto y2 = to_host(be, attn.forward(c2, to_device(be, {1, 4, 8}, xh)));
  for (int i = 0; i < 3 * 8; ++i) EXPECT_EQ(y1[i], y2[i]) << i;
  bool last_changed = false;
  for (int i = 3 * 8; i < 4 * 8; ++i) last_changed |= y1[i] != y2[i];
  EXPECT_TRUE(last_changed);
}

TEST_F(NnTest, MlpMatchesFiniteDifferences) {
  nn::MLP mlp("mlp", 8, serial);
  auto params = params_of(mlp);
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0]->name, "mlp.fc.weight");
  EXPECT_EQ(params[0]->full_shape, (Shape{32, 8}));
  EXPECT_EQ(params[2]->name, "mlp.proj.weight");
  EXPECT_EQ(params[2]->full_shape, (Shape{8, 32}));
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.4f);
  Tensor x = to_device(be, {2, 3, 8}, randn(48, 7, 1.f));
  Net net{be, {&mlp}};
  check_gradients(net, x, params, flat, kEps, 16);
}

// ---------------------------------------------------------------- mixture of experts

// The MoE MLP computed naively on the host from its parameters: softmax of
// x Wr^T, top k (ties to the lower index), weights renormalised over the k,
// capacity ceil(f k N / E) filled slot 0 first, expert e = proj(gelu_tanh(fc x)).
std::vector<double> moe_reference(const std::vector<float>& x, int64_t N, int64_t C, int64_t E, int64_t k,
                                  double capacity_factor, const std::vector<std::vector<float>>& p,
                                  int64_t* dropped) {
  // p: router [E,C], then per expert fc.w [4C,C], fc.b [4C], proj.w [C,4C], proj.b [C]
  const int64_t H = 4 * C;
  std::vector<double> out(N * C, 0.0);
  std::vector<std::vector<int>> pick(N);
  std::vector<std::vector<double>> wts(N);
  for (int64_t t = 0; t < N; ++t) {
    std::vector<double> z(E), pr(E);
    double mx = -1e300, sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t c = 0; c < C; ++c) z[e] += double(p[0][e * C + c]) * x[t * C + c];
      mx = std::max(mx, z[e]);
    }
    for (int64_t e = 0; e < E; ++e) sum += std::exp(z[e] - mx);
    for (int64_t e = 0; e < E; ++e) pr[e] = std::exp(z[e] - mx) / sum;
    std::vector<int> idx(E);
    for (int e = 0; e < E; ++e) idx[e] = e;
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return pr[a] > pr[b]; });
    double top = 0;
    for (int64_t j = 0; j < k; ++j) top += pr[idx[j]];
    for (int64_t j = 0; j < k; ++j) pick[t].push_back(idx[j]), wts[t].push_back(pr[idx[j]] / top);
  }
  const int64_t cap = capacity_factor > 0 ? int64_t(std::ceil(capacity_factor * N * k / E)) : N * k;
  std::vector<int64_t> used(E, 0);
  *dropped = 0;
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < N; ++t) {
      const int e = pick[t][j];
      if (used[e] >= cap) {
        ++*dropped;
        continue;
      }
      ++used[e];
      const auto &fw = p[1 + 4 * e], &fb = p[2 + 4 * e], &pw = p[3 + 4 * e], &pb = p[4 + 4 * e];
      std::vector<double> h(H);
      for (int64_t i = 0; i < H; ++i) {
        double a = fb[i];
        for (int64_t c = 0; c < C; ++c) a += double(fw[i * C + c]) * x[t * C + c];
        h[i] = 0.5 * a * (1 + std::tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)));
      }
      for (int64_t c = 0; c < C; ++c) {
        double y = pb[c];
        for (int64_t i = 0; i < H; ++i) y += double(pw[c * H + i]) * h[i];
        out[t * C + c] += wts[t][j] * y;
      }
    }
  return out;
}

struct MoeCase {
  int64_t experts, top_k;
  double capacity_factor;
};

void check_moe(Backend& be, LayerProvider& serial, const MoeCase& mc) {
  const int64_t C = 6, N = 10;
  nn::MoeSpec spec;
  spec.name = "moe";
  spec.dim = C;
  spec.experts = mc.experts;
  spec.top_k = mc.top_k;
  spec.capacity_factor = mc.capacity_factor;
  spec.aux_loss_coef = 0.1;
  spec.z_loss_coef = 0.05;
  nn::MoeMLP moe(spec, serial);
  auto params = params_of(moe);
  ASSERT_EQ(params.size(), static_cast<size_t>(1 + 4 * mc.experts));
  EXPECT_EQ(params[0]->name, "moe.router.weight");
  EXPECT_EQ(params[0]->full_shape, (Shape{mc.experts, C}));
  EXPECT_EQ(params[1]->name, "moe.experts.0.fc.weight");
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.5f);
  const auto xh = randn(N * C, 9, 1.f);
  Tensor x = to_device(be, {2, 5, C}, xh);

  // Forward against the naive reference, and the dropped assignments it counts.
  std::vector<std::vector<float>> p;
  for (Param* q : params) p.push_back(to_host(be, q->data));
  int64_t dropped = 0;
  const auto want = moe_reference(xh, N, C, mc.experts, mc.top_k, mc.capacity_factor, p, &dropped);
  Context ctx(be, 0);
  const auto got = to_host(be, moe.forward(ctx, x));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::abs(want[i])) << i;
  EXPECT_EQ(ctx.stats.at("moe_dropped"), static_cast<double>(dropped));
  EXPECT_EQ(ctx.stats.at("moe_assignments"), static_cast<double>(N * mc.top_k));
  if (mc.capacity_factor > 0) {
    EXPECT_GT(dropped, 0) << "the case should drop some assignments";
  }

  // Gradients of sum(y r) + aux + z against finite differences. The routing is
  // piecewise constant in which experts a token picks: the step is small enough
  // that no token's top k changes within +-2h for these seeds (kEps flips some
  // routes when a router weight moves).
  Net net{be, {&moe}};
  check_gradients(net, x, params, flat, kEps / 10, 12);
}

TEST_F(NnTest, MoeTop1MatchesReferenceAndFiniteDifferences) { check_moe(be, serial, {4, 1, 0.0}); }
TEST_F(NnTest, MoeTop2MatchesReferenceAndFiniteDifferences) { check_moe(be, serial, {4, 2, 0.0}); }
TEST_F(NnTest, MoeTop2WithCapacityDropsMatchesReference) { check_moe(be, serial, {4, 2, 0.5}); }

// The load-balancing loss of perfectly balanced routing is coef (E sum_i 1/E 1/E = 1),
// times the microbatch's share N dloss_scale.
TEST_F(NnTest, MoeAuxLossOfBalancedRoutingIsTheCoefficient) {
  nn::MoeSpec spec;
  spec.name = "moe";
  spec.dim = 4;
  spec.experts = 4;
  spec.top_k = 1;
  spec.aux_loss_coef = 0.3;
  nn::MoeMLP moe(spec, serial);
  auto params = params_of(moe);
  FlatParams flat = materialize_params(params, be, 1);
  // Router = identity: token t (one-hot on channel t % 4) goes to expert t % 4 with probability p.
  std::vector<float> eye(16, 0.f);
  for (int i = 0; i < 4; ++i) eye[i * 4 + i] = 5.f;
  be.copy_from_host(params[0]->data, eye.data());
  std::vector<float> xh(8 * 4, 0.f);
  for (int t = 0; t < 8; ++t) xh[t * 4 + t % 4] = 1.f;
  Context ctx(be, 0);
  ctx.dloss_scale = 1.f / 64;  // N = 8 of 64 tokens in the step
  moe.forward(ctx, to_device(be, {8, 4}, xh));
  // f_i = 1/4; P_i = mean probability = 1/4 by symmetry: aux = 0.3 * 4 * 4 * (1/4 * 1/4) = 0.3.
  EXPECT_NEAR(ctx.stats.at("aux_loss"), 0.3 * 8.0 / 64.0, 1e-6);
  EXPECT_NEAR(ctx.stats.at("moe_load_ratio_sum"), 1.0, 1e-12);
  ctx.release(&moe);
}

TEST_F(NnTest, BlockMatchesFiniteDifferences) {
  nn::Block block("blk", 12, 3, serial);
  auto params = params_of(block);
  ASSERT_EQ(params.size(), 12u);
  FlatParams flat = materialize_params(params, be, 1);
  randomize(params, be, 0.3f);
  Tensor x = to_device(be, {2, 4, 12}, randn(96, 8, 1.f));
  Net net{be, {&block}};
  check_gradients(net, x, params, flat, kEps, 12);
}

// ---------------------------------------------------------------- GPT

struct GptBatch {
  Tensor ids, targets;
};

GptBatch tiny_batch(Backend& be, uint64_t stream, int64_t b = 2, int64_t t = 5, int64_t v = 11) {
  std::vector<int32_t> ids(static_cast<size_t>(b * t)), tg(static_cast<size_t>(b * t));
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int32_t>(uniform01(kTestSeed, stream, i) * v);
    tg[i] = static_cast<int32_t>(uniform01(kTestSeed, stream + 1, i) * v);
  }
  return {ids_to_device(be, {b, t}, ids), ids_to_device(be, {b, t}, tg)};
}

// The model's layers in order on one microbatch: per-token losses [B,T].
Tensor forward_layers(Context& ctx, const std::vector<Module*>& layers, Tensor x) {
  for (Module* m : layers) x = m->forward(ctx, x);
  return x;
}

void backward_layers(Context& ctx, const std::vector<Module*>& layers) {
  Tensor d;
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) d = (*it)->backward(ctx, d);
}

// After the first training step, every block of 64 KiB or more that a step
// allocates (activations, workspace, logits) comes from the backend's block
// cache: the steady state maps no fresh memory.
TEST_F(NnTest, GptStepsTakeNoFreshBlocksAfterTheFirst) {
  gpt::GptConfig c = tiny_gpt_config();
  c.hidden = 64;
  c.heads = 4;
  c.seq_length = 64;
  c.vocab = 257;
  c.padded_vocab = 320;
  gpt::GptModel model(c, nullptr);
  FlatParams flat = materialize_params(model.params(), be, kTestSeed);
  GptBatch batch = tiny_batch(be, 31, 4, 64, 257);  // [4,64]: [B,T,C] activations are 64 KiB
  const std::vector<Module*> layers = model.layers();
  auto step = [&] {
    Context ctx(be, 0);
    ctx.targets = batch.targets;
    ctx.dloss_scale = 1.f / 256.f;
    forward_layers(ctx, layers, batch.ids);
    backward_layers(ctx, layers);
  };
  step();
  const int64_t misses = be.cache_misses(), hits = be.cache_hits();
  EXPECT_GT(misses, 0);  // the first step does map its blocks
  for (int i = 0; i < 3; ++i) step();
  EXPECT_EQ(be.cache_misses(), misses);
  EXPECT_GT(be.cache_hits(), hits + 20);  // and later steps reuse them
}

// 3 blocks of width 16, 2 heads, 8 tokens: the activation-bytes tests' model.
gpt::GptConfig activation_test_config() {
  gpt::GptConfig c = tiny_gpt_config();
  c.layers = 3;
  c.hidden = 16;
  c.heads = 2;
  c.seq_length = 8;
  return c;
}

// Saved activations in the compute dtype (docs/precision.md): with 16-bit
// weights every LayerNorm keeps its input rounded to 16 bits, every linear
// layer the 16-bit copy of its input that its GEMM reads, attention q|k|v in
// 16 bits (and its output, the copy proj reads), the MLP GeLU's input and the
// output layer dlogits, so the bytes a forward leaves for backward shrink, per
// token, by 2 bytes for each element of
//   per block: ln1 in (C), ln1 out (C), qkv (3C), attention out (C), ln2 in (C),
//              ln2 out (C), fc out = gelu in (4C), gelu out (4C)
//   head:      lnf in (C), lnf out (C), dlogits (Vp)
// i.e. N (32 L C + 4 C + 2 Vp) bytes, N = B T tokens; mean, rstd and lse stay fp32.
TEST_F(NnTest, SixteenBitModesKeepNormAndLinearInputsQkvAndDlogitsInSixteenBits) {
  gpt::GptConfig c = activation_test_config();
  const int64_t b = 2, n = b * c.seq_length;
  std::map<DType, int64_t> saved;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    gpt::GptModel model(c, nullptr);
    FlatParams flat = materialize_params(model.params(), be, kTestSeed);
    if (dt != DType::F32) {
      for (Param* p : model.params()) {  // the compute copy a precision mode makes
        Tensor h = be.alloc(p->shape, dt, MemCategory::Param);
        be.cast(h, p->data);
        p->data = h;
      }
    }
    GptBatch batch = tiny_batch(be, 41, b, c.seq_length, c.vocab);
    Context ctx(be, 0);
    ctx.targets = batch.targets;
    ctx.dloss_scale = 1.f / static_cast<float>(n);
    const int64_t before = be.mem_stats().current[static_cast<int>(MemCategory::Activation)];
    forward_layers(ctx, model.layers(), batch.ids);  // the losses it returns are not saved
    saved[dt] = be.mem_stats().current[static_cast<int>(MemCategory::Activation)] - before;
    backward_layers(ctx, model.layers());
    EXPECT_EQ(be.mem_stats().current[static_cast<int>(MemCategory::Activation)], before)
        << dtype_name(dt) << ": backward released every saved activation";
  }
  const int64_t C = c.hidden, L = c.layers, Vp = c.padded_vocab;
  EXPECT_GT(saved[DType::F32], 0);
  EXPECT_EQ(saved[DType::F32] - saved[DType::BF16], n * (32 * L * C + 4 * C + 2 * Vp));
  EXPECT_EQ(saved[DType::F32] - saved[DType::F16], n * (32 * L * C + 4 * C + 2 * Vp));
}

TEST_F(NnTest, GptParamNamesAndShapes) {
  gpt::GptModel model(tiny_gpt_config(), nullptr);
  const int64_t C = 12;
  std::vector<std::pair<std::string, Shape>> want = {{"wte.weight", {16, C}}, {"wpe.weight", {5, C}}};
  for (int i = 0; i < 2; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    std::vector<std::pair<std::string, Shape>> blk = {
        {b + "ln1.weight", {C}},         {b + "ln1.bias", {C}},
        {b + "attn.qkv.weight", {3 * C, C}}, {b + "attn.qkv.bias", {3 * C}},
        {b + "attn.proj.weight", {C, C}},    {b + "attn.proj.bias", {C}},
        {b + "ln2.weight", {C}},         {b + "ln2.bias", {C}},
        {b + "mlp.fc.weight", {4 * C, C}},   {b + "mlp.fc.bias", {4 * C}},
        {b + "mlp.proj.weight", {C, 4 * C}}, {b + "mlp.proj.bias", {C}}};
    want.insert(want.end(), blk.begin(), blk.end());
  }
  want.push_back({"lnf.weight", {C}});
  want.push_back({"lnf.bias", {C}});

  auto params = model.params();
  ASSERT_EQ(params.size(), want.size());
  int64_t total = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const Param& p = *params[i];
    EXPECT_EQ(p.name, want[i].first);
    EXPECT_EQ(p.full_shape, want[i].second) << p.name;
    EXPECT_EQ(p.shape, want[i].second) << p.name;
    EXPECT_FALSE(p.data.defined()) << p.name << " must not be allocated before materialize_params";
    const bool is_bias = p.name.ends_with(".bias");
    const bool is_norm = p.name.find("ln") != std::string::npos;
    EXPECT_EQ(p.weight_decay, !(is_bias || is_norm)) << p.name;
    if (is_bias) EXPECT_EQ(p.init, InitKind::Zeros) << p.name;
    else if (is_norm) EXPECT_EQ(p.init, InitKind::Ones) << p.name;
    else {
      EXPECT_EQ(p.init, InitKind::Normal) << p.name;
      const bool residual = p.name.ends_with("attn.proj.weight") || p.name.ends_with("mlp.proj.weight");
      EXPECT_FLOAT_EQ(p.init_std, residual ? 0.02f / 2.f : 0.02f) << p.name;  // sqrt(2*L) = 2
    }
    total += shape_numel(p.full_shape);
  }
  const ModelSummary s = model.summary();
  EXPECT_EQ(s.params, total);
  EXPECT_EQ(s.flops_per_token, 6 * (total - 5 * C) + 6 * 2 * 5 * C);
  EXPECT_EQ(s.seq_length, 5);
  EXPECT_EQ(s.vocab, 11);
  EXPECT_EQ(s.padded_vocab, 16);
  EXPECT_GT(s.act_bytes_per_sample, 0);
  EXPECT_EQ(model.layers().size(), 4u);  // embedding, 2 blocks, head
}

TEST_F(NnTest, GptOptions) {
  const OptionSchema schema = gpt::gpt_schema();
  gpt::GptConfig c = gpt::gpt_config(options_from(schema, "model"), 50257);
  EXPECT_EQ(c.layers, 2);
  EXPECT_EQ(c.hidden, 128);
  EXPECT_EQ(c.heads, 4);
  EXPECT_EQ(c.seq_length, 64);
  EXPECT_FLOAT_EQ(c.init_std, 0.02f);
  EXPECT_EQ(c.vocab, 50257);
  EXPECT_EQ(c.padded_vocab, 50304);
  c = gpt::gpt_config(options_from(schema, "model", {{"vocab_pad_multiple", int64_t(16)}}), 11);
  EXPECT_EQ(c.padded_vocab, 16);
  c = gpt::gpt_config(options_from(schema, "model", {{"vocab_pad_multiple", int64_t(1)}}), 11);
  EXPECT_EQ(c.padded_vocab, 11);
  // vocab_size: a V of its own, at least the tokenizer's.
  c = gpt::gpt_config(options_from(schema, "model", {{"vocab_size", int64_t(50304)}}), 257);
  EXPECT_EQ(c.vocab, 50304);
  EXPECT_EQ(c.padded_vocab, 50304);
  c = gpt::gpt_config(options_from(schema, "model", {{"vocab_size", int64_t(257)}}), 257);
  EXPECT_EQ(c.vocab, 257);
  EXPECT_EQ(c.padded_vocab, 320);
  try {
    gpt::gpt_config(options_from(schema, "model", {{"vocab_size", int64_t(100)}}), 257);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("vocab_size 100 is smaller than the tokenizer's vocabulary of 257"), std::string::npos) << msg;
  }
  try {
    gpt::gpt_config(options_from(schema, "model", {{"hidden", int64_t(130)}}), 256);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("hidden 130 is not divisible by heads 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("heads"), std::string::npos) << msg;
  }
  // The plugin factory builds the model through the environment's provider.
  ModelEnv env;
  env.vocab_size = 11;
  auto model = gpt::make_gpt(
      options_from(schema, "model", {{"hidden", int64_t(8)}, {"heads", int64_t(2)}, {"seq_length", int64_t(4)}}),
      env);
  EXPECT_EQ(model->summary().padded_vocab, 64);
  EXPECT_EQ(model->params().front()->full_shape, (Shape{64, 8}));
}

TEST_F(NnTest, GptEmbeddingAndLogits) {
  gpt::GptModel model(tiny_gpt_config(), nullptr);
  auto params = model.params();
  FlatParams flat = materialize_params(params, be, kTestSeed);
  randomize(params, be, 0.3f);
  GptBatch batch = tiny_batch(be, 11);
  std::vector<int32_t> ids(10), tg(10);
  be.copy_to_host(ids.data(), batch.ids);
  be.copy_to_host(tg.data(), batch.targets);

  // Layer 0: x[b,t] = wte[id] + wpe[t].
  {
    Context ctx(be, 0);
    auto x = to_host(be, model.embedding().forward(ctx, batch.ids));
    auto wte = to_host(be, model.embedding().wte().data), wpe = to_host(be, model.embedding().wpe().data);
    for (int n = 0; n < 10; ++n)
      for (int c = 0; c < 12; ++c)
        EXPECT_FLOAT_EQ(x[n * 12 + c], wte[ids[n] * 12 + c] + wpe[(n % 5) * 12 + c]);
  }
  // Without targets the head returns logits [B,T,Vp]; with targets, their cross entropy.
  std::vector<float> logits, losses;
  {
    Net net{be, model.layers()};
    Context ctx(be, 0);
    Tensor out = net.forward(ctx, batch.ids);
    EXPECT_EQ(out.shape(), (Shape{2, 5, 16}));
    logits = to_host(be, out);
  }
  {
    Net net{be, model.layers()};
    Context ctx(be, 0);
    ctx.targets = batch.targets;
    Tensor out = net.forward(ctx, batch.ids);
    EXPECT_EQ(out.shape(), (Shape{2, 5}));
    losses = to_host(be, out);
  }
  for (int n = 0; n < 10; ++n) {
    double mx = -1e30, sum = 0;
    for (int v = 0; v < 11; ++v) mx = std::max(mx, static_cast<double>(logits[n * 16 + v]));
    for (int v = 0; v < 11; ++v) sum += std::exp(logits[n * 16 + v] - mx);
    const double ref = std::log(sum) + mx - logits[n * 16 + tg[n]];
    EXPECT_NEAR(losses[n], ref, 1e-4) << n;
  }
}

TEST_F(NnTest, GptLossMatchesFiniteDifferences) {
  gpt::GptModel model(tiny_gpt_config(), nullptr);
  auto params = model.params();
  FlatParams flat = materialize_params(params, be, kTestSeed);
  randomize(params, be, 0.3f);
  GptBatch batch = tiny_batch(be, 21);
  Net net{be, model.layers(), batch.targets, 0.5f};  // backward must start from ctx.dloss_scale
  check_gradients(net, batch.ids, params, flat, kEps, 6);
}

TEST_F(NnTest, GradientsAccumulateOverMicrobatches) {
  gpt::GptModel model(tiny_gpt_config(), nullptr);
  auto params = model.params();
  FlatParams flat = materialize_params(params, be, kTestSeed);
  randomize(params, be, 0.3f);
  GptBatch a = tiny_batch(be, 31), b = tiny_batch(be, 41);
  const float scale = 1.f / 20.f;
  const MemStats before = be.mem_stats();

  auto run_alone = [&](const GptBatch& mb) {
    zero_grads(flat, be);
    Net net{be, model.layers(), mb.targets, scale};
    net.objective(mb.ids);
    net.backward(mb.ids);
    return to_host(be, flat.grad);
  };
  const auto ga = run_alone(a), gb = run_alone(b);

  // Both microbatches in flight: forward a, forward b, backward a, backward b (last).
  zero_grads(flat, be);
  std::map<std::string, std::vector<float>> at_ready;
  {
    Net net{be, model.layers()};
    Context ca(be, 0), cb(be, 1);
    ca.targets = a.targets;
    cb.targets = b.targets;
    ca.dloss_scale = cb.dloss_scale = scale;
    ca.last_microbatch = false;
    cb.last_microbatch = true;
    auto hook = [&](Param& p) {
      EXPECT_EQ(at_ready.count(p.name), 0u) << p.name << " reported twice";
      at_ready[p.name] = to_host(be, p.grad);
    };
    ca.on_grad_ready = hook;
    cb.on_grad_ready = hook;
    Tensor la = net.forward(ca, a.ids);
    Tensor lb = net.forward(cb, b.ids);
    Tensor d;
    for (auto it = net.layers.rbegin(); it != net.layers.rend(); ++it) d = (*it)->backward(ca, d);
    EXPECT_TRUE(at_ready.empty()) << "no param is ready before the last microbatch";
    for (auto it = net.layers.rbegin(); it != net.layers.rend(); ++it) d = (*it)->backward(cb, d);
  }
  const auto g = to_host(be, flat.grad);
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_NEAR(g[i], ga[i] + gb[i], 1e-5 * (std::abs(ga[i]) + std::abs(gb[i])) + 1e-7) << i;

  // Every param reported once, with its final gradient.
  EXPECT_EQ(at_ready.size(), params.size());
  for (Param* p : params) {
    ASSERT_EQ(at_ready.count(p->name), 1u) << p->name;
    EXPECT_EQ(at_ready[p->name], to_host(be, p->grad)) << p->name << " reported before its gradient was final";
  }
  // Saved activations and workspaces were all released.
  const MemStats after = be.mem_stats();
  EXPECT_EQ(after.current[static_cast<int>(MemCategory::Activation)],
            before.current[static_cast<int>(MemCategory::Activation)]);
  EXPECT_EQ(after.current[static_cast<int>(MemCategory::Workspace)],
            before.current[static_cast<int>(MemCategory::Workspace)]);
}

// 16-bit gradients (precision.accumulate_grads_in_fp32 = false), three
// microbatches one after another: every gradient is the fp32 accumulation
// rounded once per microbatch, acc <- round(acc + g_k), with g_k that
// microbatch's fp32 gradient from a copy of the model with fp32 gradients and
// the same 16-bit weights; bit for bit (as values: +0 and -0 alike). The
// tied table takes two contributions per microbatch (output layer, then
// embedding), each rounded, so it is held to the bound that allows: per
// microbatch |error| grows by at most 3u (|acc| + |g_k| + |error|).
TEST_F(NnTest, SixteenBitGradientsRoundOncePerMicrobatch) {
  for (DType dt : {DType::BF16, DType::F16}) {
    for (bool untie : {true, false}) {
      const std::string what = std::string(dtype_name(dt)) + (untie ? " untied" : " tied");
      gpt::GptConfig c = tiny_gpt_config();
      c.untie = untie;
      gpt::GptModel m16(c, nullptr), m32(c, nullptr);
      FlatParams f16 = materialize_params(m16.params(), be, kTestSeed, dt, dt);
      FlatParams f32 = materialize_params(m32.params(), be, kTestSeed, dt, DType::F32);
      ASSERT_EQ(f16.grad.dtype(), dt);
      ASSERT_EQ(f16.numel, f32.numel);
      auto round = [&](float v) {
        return dt == DType::BF16 ? bf16_to_float(float_to_bf16(v)) : f16_to_float(float_to_f16(v));
      };
      const double u = dt == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
      auto run = [&](gpt::GptModel& m, const GptBatch& mb) {
        Context ctx(be, 0);
        ctx.targets = mb.targets;
        ctx.dloss_scale = 1.f / 30.f;
        forward_layers(ctx, m.layers(), mb.ids);
        backward_layers(ctx, m.layers());
      };
      std::vector<float> want(static_cast<size_t>(f16.numel), 0.f);
      std::vector<double> bound(want.size(), 0.0);
      for (int k = 0; k < 3; ++k) {
        const GptBatch mb = tiny_batch(be, 51 + 10 * k, 3, c.seq_length, c.vocab);
        zero_grads(f32, be);
        run(m32, mb);
        const std::vector<float> g = to_host(be, f32.grad);
        run(m16, mb);  // accumulates onto the earlier microbatches
        for (size_t i = 0; i < want.size(); ++i) {
          bound[i] += 3 * u * (std::abs(want[i]) + std::abs(g[i]) + bound[i]);
          want[i] = round(want[i] + g[i]);
        }
      }
      std::vector<uint16_t> raw(want.size());
      be.copy_to_host(raw.data(), f16.grad);
      int exact = 0;
      for (size_t pi = 0; pi < f16.params.size(); ++pi) {
        const Param& p = *f16.params[pi];
        const bool tied_table = !untie && p.name == "wte.weight";
        int misses = 0;
        for (int64_t e = 0; e < p.grad.numel(); ++e) {
          const size_t i = static_cast<size_t>(f16.offsets[pi] + e);
          const float got = dt == DType::BF16 ? bf16_to_float(raw[i]) : f16_to_float(raw[i]);
          const bool ok = tied_table ? std::abs(got - want[i]) <= bound[i] : got == want[i];
          if (!ok && ++misses <= 3) ADD_FAILURE() << what << " " << p.name << "[" << e << "]: " << got << " vs " << want[i];
          exact += !tied_table;
        }
        EXPECT_EQ(misses, 0) << what << " " << p.name;
      }
      EXPECT_GT(exact, f16.numel / 2) << what;
      // The gradients are not all zero (the comparison means something).
      EXPECT_GT(std::count_if(want.begin(), want.end(), [](float v) { return v != 0.f; }), f16.numel / 2) << what;
    }
  }
}

// ---------------------------------------------------------------- materialize_params

// Logical index of local element e, computed independently of params.cpp.
int64_t reference_logical(const Param& p, int64_t e) {
  const size_t nd = p.shape.size();
  std::vector<int64_t> idx(nd);
  for (size_t d = nd; d-- > 0;) {
    idx[d] = e % p.shape[d];
    e /= p.shape[d];
  }
  if (p.shard.dim >= 0) idx[p.shard.dim] += p.shard.index * p.shape[p.shard.dim];
  int64_t l = 0;
  for (size_t d = 0; d < nd; ++d) l = l * p.full_shape[d] + idx[d];
  return l;
}

TEST_F(NnTest, MaterializeIsLayoutInvariant) {
  for (const Shape& full : {Shape{6, 8}, Shape{4, 6, 5}}) {
    Param whole = nn::make_param("blocks.0.attn.qkv.weight", full, InitKind::Normal, 0.5f, true);
    FlatParams fw = materialize_params({&whole}, be, 7);
    const auto ref = to_host(be, whole.data);
    for (int dim = 0; dim < static_cast<int>(full.size()); ++dim) {
      for (int count : {2, static_cast<int>(full[dim])}) {
        if (full[dim] % count) continue;
        for (int index = 0; index < count; ++index) {
          Param part = nn::make_param("blocks.0.attn.qkv.weight", full, InitKind::Normal, 0.5f, true,
                                      ShardSpec{dim, index, count});
          EXPECT_EQ(part.shape[dim], full[dim] / count);
          FlatParams fp = materialize_params({&part}, be, 7);
          const auto got = to_host(be, part.data);
          for (int64_t e = 0; e < part.data.numel(); ++e) {
            EXPECT_EQ(logical_index(part, e), reference_logical(part, e));
            ASSERT_EQ(got[e], ref[reference_logical(part, e)])
                << shape_str(full) << " dim " << dim << " shard " << index << "/" << count << " elem " << e;
          }
        }
      }
    }
  }
  // Another seed or name gives other numbers.
  Param a = nn::make_param("x", {16}, InitKind::Normal, 1.f, true);
  Param b = nn::make_param("y", {16}, InitKind::Normal, 1.f, true);
  FlatParams fa = materialize_params({&a}, be, 7);
  FlatParams fb = materialize_params({&b}, be, 7);
  EXPECT_NE(to_host(be, a.data), to_host(be, b.data));
  const auto a7 = to_host(be, a.data);
  FlatParams fa8 = materialize_params({&a}, be, 8);
  EXPECT_NE(to_host(be, a.data), a7);
}

TEST_F(NnTest, MaterializeLayoutAndInitStatistics) {
  Param w = nn::make_param("big.weight", {256, 384}, InitKind::Normal, 0.02f, true);
  Param ones = nn::make_param("n.weight", {100}, InitKind::Ones, 0.f, false);
  Param zeros = nn::make_param("n.bias", {100}, InitKind::Zeros, 0.f, false);
  const MemStats before = be.mem_stats();
  FlatParams flat = materialize_params({&w, &ones, &zeros}, be, 3);
  const MemStats after = be.mem_stats();
  const int64_t numel = 256 * 384 + 200;
  EXPECT_EQ(flat.numel, numel);
  EXPECT_EQ(flat.offsets, (std::vector<int64_t>{0, 256 * 384, 256 * 384 + 100}));
  EXPECT_EQ(flat.params, (std::vector<Param*>{&w, &ones, &zeros}));
  EXPECT_EQ(after.current[static_cast<int>(MemCategory::Param)] - before.current[static_cast<int>(MemCategory::Param)],
            numel * 4);
  EXPECT_EQ(after.current[static_cast<int>(MemCategory::Grad)] - before.current[static_cast<int>(MemCategory::Grad)],
            numel * 4);
  // Views into the flat buffers.
  EXPECT_EQ(ones.data.data<float>(), flat.data.data<float>() + 256 * 384);
  EXPECT_EQ(zeros.grad.data<float>(), flat.grad.data<float>() + 256 * 384 + 100);
  EXPECT_EQ(w.data.shape(), (Shape{256, 384}));

  for (float v : to_host(be, ones.data)) ASSERT_EQ(v, 1.f);
  for (float v : to_host(be, zeros.data)) ASSERT_EQ(v, 0.f);
  for (float v : to_host(be, flat.grad)) ASSERT_EQ(v, 0.f);
  const auto wv = to_host(be, w.data);
  double s = 0, s2 = 0;
  for (float v : wv) s += v, s2 += static_cast<double>(v) * v;
  const double mean = s / wv.size(), sd = std::sqrt(s2 / wv.size() - mean * mean);
  EXPECT_NEAR(sd, 0.02, 0.002);
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_EQ(wv[5], normal01(3, name_key("big.weight"), 5) * 0.02f);

  // zero_grads clears everything, inf and nan included.
  std::vector<float> junk(static_cast<size_t>(numel), 3.f);
  junk[1] = std::numeric_limits<float>::infinity();
  junk[7] = std::numeric_limits<float>::quiet_NaN();
  be.copy_from_host(flat.grad, junk.data());
  zero_grads(flat, be);
  for (float v : to_host(be, flat.grad)) ASSERT_EQ(v, 0.f);
}

// ---------------------------------------------------------------- tensor_parallel "megatron"

TEST_F(NnTest, MegatronProviderBuildsPlainLinearsAtTp1) {
  const Options opts = options_from(tp::megatron_schema(), "parallel.tensor_parallel");
  ParallelEnv env;  // null topology: tp = 1
  auto provider = tp::make_megatron(opts, env);
  EXPECT_EQ(provider->tp_size(), 1);
  auto col = provider->column_linear(LinearSpec{"blocks.0.attn.qkv", 8, 24, true, 0.02f});
  auto row = provider->row_linear(LinearSpec{"blocks.0.attn.proj", 8, 8, true, 0.01f});
  auto* lin = dynamic_cast<nn::Linear*>(col.get());
  ASSERT_NE(lin, nullptr);
  EXPECT_EQ(lin->weight().name, "blocks.0.attn.qkv.weight");
  EXPECT_EQ(lin->weight().full_shape, (Shape{24, 8}));
  ASSERT_NE(dynamic_cast<nn::Linear*>(row.get()), nullptr);

  Topology topo;
  topo.sizes.tp = 1;
  env.topology = &topo;
  EXPECT_EQ(tp::make_megatron(opts, env)->tp_size(), 1);

  // A GPT built through it has the same params as a serial one.
  gpt::GptModel a(tiny_gpt_config(), provider.get()), b(tiny_gpt_config(), nullptr);
  ASSERT_EQ(a.params().size(), b.params().size());
  for (size_t i = 0; i < a.params().size(); ++i) EXPECT_EQ(a.params()[i]->name, b.params()[i]->name);
}

TEST_F(NnTest, MegatronProviderRefusesSequenceParallelAtTp1) {
  const Options opts = options_from(tp::megatron_schema(), "parallel.tensor_parallel",
                                    {{"sequence_parallel", true}});
  Topology topo;
  topo.sizes.tp = 1;
  ParallelEnv env;
  env.topology = &topo;
  try {
    tp::make_megatron(opts, env);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence_parallel"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("it needs parallel.tensor > 1 (tensor is 1)"), std::string::npos) << e.what();
  }
  topo.sizes.tp = 2;  // accepted with tp 2 (the layers get their communicator at run time)
  EXPECT_TRUE(tp::make_megatron(opts, env)->sequence_parallel());
}

}  // namespace

// ---------------------------------------------------------------- saved activations against the summaries

namespace {

// Activation bytes a model keeps from forward for backward on one microbatch of
// b sequences, with the compute copy of the weights in `dt` (what a precision
// mode makes).
int64_t saved_activation_bytes(Backend& be, Model& model, DType dt, int64_t b, int64_t t, int64_t vocab) {
  FlatParams flat = materialize_params(model.params(), be, kTestSeed);
  if (dt != DType::F32)
    for (Param* p : model.params()) {
      Tensor h = be.alloc(p->shape, dt, MemCategory::Param);
      be.cast(h, p->data);
      p->data = h;
    }
  GptBatch batch = tiny_batch(be, 43, b, t, vocab);
  Context ctx(be, 0);
  ctx.targets = batch.targets;
  ctx.dloss_scale = 1.f / static_cast<float>(b * t);
  const int64_t before = be.mem_stats().current[static_cast<int>(MemCategory::Activation)];
  forward_layers(ctx, model.layers(), batch.ids);
  const int64_t saved = be.mem_stats().current[static_cast<int>(MemCategory::Activation)] - before;
  backward_layers(ctx, model.layers());
  return saved;
}

}  // namespace

// ModelSummary's activation figures (what `weft check` and `weft plan`
// estimate from) equal the bytes the modules keep, in fp32 and in bf16/f16,
// plus the step's per-token loss and the batch's ids and targets (4 bytes
// each), which the summaries count and the modules do not allocate.
TEST_F(NnTest, SummaryActivationBytesEqualWhatTheModelsKeep) {
  const int64_t b = 2;
  const auto batch_bytes = [&](int64_t t) { return b * t * 12; };
  const gpt::GptConfig g = activation_test_config();
  llama::LlamaConfig l;
  l.layers = 3;
  l.hidden = 16;
  l.heads = 4;
  l.kv_heads = 2;
  l.ffn_hidden = 40;
  l.seq_length = 8;
  l.vocab = 11;
  l.padded_vocab = 16;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    {
      gpt::GptModel model(g, nullptr);
      const ModelSummary s = model.summary();
      const int64_t want = b * (dt == DType::F32 ? s.act_bytes_per_sample : s.act16_bytes_per_sample);
      EXPECT_EQ(saved_activation_bytes(be, model, dt, b, g.seq_length, g.vocab) + batch_bytes(g.seq_length), want)
          << "gpt " << dtype_name(dt);
    }
    {
      llama::LlamaModel model(l, &serial);
      const ModelSummary s = model.summary();
      const int64_t want = b * (dt == DType::F32 ? s.act_bytes_per_sample : s.act16_bytes_per_sample);
      EXPECT_EQ(saved_activation_bytes(be, model, dt, b, l.seq_length, l.vocab) + batch_bytes(l.seq_length), want)
          << "llama " << dtype_name(dt);
    }
  }
}
