// Tensor-parallel layers (parallel/tp) against the serial nn layers: p ranks as
// threads (comm-local), each with its own CPU backend, run the column- and
// row-parallel Linears, the vocabulary-parallel embedding and the
// vocabulary-parallel output layer with its loss, with and without sequence
// parallelism. Every rank's outputs, input gradients and parameter-gradient
// shards must equal the matching slices of the serial layer's (rel 1e-5), for
// odd sizes where the split allows them. Also the logical <-> shard mapping of
// a fused q|k|v weight.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "cpu_backend.hpp"
#include "local_comm.hpp"
#include "tp_layers.hpp"
#include "weft/error.hpp"
#include "weft/nn.hpp"
#include "weft/params.hpp"
#include "weft/rng.hpp"

using namespace weft;

namespace {

constexpr uint64_t kSeed = 77;
constexpr int64_t B = 2, T = 4;  // T splits over p = 2 and 4 (sequence parallelism)

std::vector<float> randn(int64_t n, uint64_t stream, float scale = 1.f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = normal01(kSeed, stream, static_cast<uint64_t>(i)) * scale;
  return v;
}

std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) be.copy_to_host(v.data(), t);
  return v;
}

Tensor device(Backend& be, const Shape& shape, const std::vector<float>& v) {
  Tensor t = be.alloc(shape, DType::F32, MemCategory::Workspace);
  EXPECT_EQ(static_cast<size_t>(t.numel()), v.size());
  if (!v.empty()) be.copy_from_host(t, v.data());
  return t;
}

// Allocates params and sets each to its share of `full` (logical values).
FlatParams materialize_with(const std::vector<Param*>& params, Backend& be,
                            const std::vector<std::vector<float>>& full) {
  FlatParams flat = materialize_params(params, be, kSeed);
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<float> local(params[i]->data.numel());
    if (params[i]->tp_replicated)
      local = full[i];
    else
      slice_shard_host(*params[i], full[i].data(), local.data());
    be.copy_from_host(params[i]->data, local.data());
  }
  return flat;
}

// The slice [B, T/p, C] of rank r from [B, T, C].
std::vector<float> seq_slice(const std::vector<float>& x, int64_t c, int p, int r) {
  const int64_t ts = T / p;
  std::vector<float> out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = r * ts; t < (r + 1) * ts; ++t)
      out.insert(out.end(), x.begin() + (b * T + t) * c, x.begin() + (b * T + t + 1) * c);
  return out;
}

// Columns of [N, full] that the shard of `p` (sharded on its dim 0) holds, as [N, local].
std::vector<float> column_slice(const std::vector<float>& x, const Param& p) {
  const int64_t full = p.full_shape[0], local = p.shape[0], n = static_cast<int64_t>(x.size()) / full;
  std::vector<float> out(n * local);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < local; ++j) out[i * local + j] = x[i * full + logical_index(p, j)];
  return out;
}

std::vector<float> shard_of(const Param& p, const std::vector<float>& full) {
  std::vector<float> local(shape_numel(p.shape));
  slice_shard_host(p, full.data(), local.data());
  return local;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5 * (1.0 + std::abs(want[i]))) << what << " element " << i;
}

// Runs body(comm, backend) on p ranks as threads; failures inside are gtest failures.
void on_ranks(int p, const std::function<void(Communicator&, Backend&)>& body) {
  LocalLauncher launcher(60.0);
  launcher.run(p, [&](Communicator& comm, const LaunchInfo&) {
    CpuBackend be(1);
    body(comm, be);
  });
}

struct Case {
  int p;
  bool sp;
  std::string label() const { return "tp" + std::to_string(p) + (sp ? "_sp" : ""); }
};

class TensorParallel : public ::testing::TestWithParam<Case> {};

// ---------------------------------------------------------------- Linears

// Serial reference for y = x W^T + b and its backward with dy.
struct LinearRef {
  std::vector<float> y, dx, dw, db;
};

LinearRef serial_linear(const LinearSpec& spec, const std::vector<float>& w, const std::vector<float>& b,
                        const std::vector<float>& x, const std::vector<float>& dy) {
  CpuBackend be(1);
  nn::Linear lin(spec);
  std::vector<Param*> params;
  lin.collect_params(params);
  FlatParams flat = materialize_with(params, be, {w, b});
  Context ctx(be, 0);
  LinearRef r;
  r.y = host(be, lin.forward(ctx, device(be, {B, T, spec.in}, x)));
  r.dx = host(be, lin.backward(ctx, device(be, {B, T, spec.out}, dy)));
  r.dw = host(be, lin.weight().grad);
  r.db = host(be, lin.bias()->grad);
  return r;
}

TEST_P(TensorParallel, ColumnParallelLinearMatchesSerial) {
  const Case c = GetParam();
  for (int fused : {1, 3}) {
    const LinearSpec spec{"blocks.0.attn.qkv", 5, fused * 2 * c.p, true, 0.5f, fused};  // in 5 (odd)
    const auto w = randn(spec.out * spec.in, 1), b = randn(spec.out, 2), x = randn(B * T * spec.in, 3),
               dy = randn(B * T * spec.out, 4);
    const LinearRef ref = serial_linear(spec, w, b, x, dy);
    on_ranks(c.p, [&](Communicator& comm, Backend& be) {
      const int r = comm.rank();
      tp::ColumnParallelLinear lin(spec, tp::TpGroup{&comm, c.p, r, c.sp});
      std::vector<Param*> params;
      lin.collect_params(params);
      ASSERT_EQ(params.size(), 2u);
      EXPECT_EQ(params[0]->shape, (Shape{spec.out / c.p, spec.in}));
      EXPECT_FALSE(params[0]->tp_replicated);
      EXPECT_FALSE(params[1]->tp_replicated);
      FlatParams flat = materialize_with(params, be, {w, b});
      Context ctx(be, 0);
      const auto x_in = c.sp ? seq_slice(x, spec.in, c.p, r) : x;
      Tensor y = lin.forward(ctx, device(be, {B, c.sp ? T / c.p : T, spec.in}, x_in));
      EXPECT_EQ(y.shape(), (Shape{B, T, spec.out / c.p}));
      expect_close(host(be, y), column_slice(ref.y, *params[1]), "y");
      Tensor dx = lin.backward(ctx, device(be, y.shape(), column_slice(dy, *params[1])));
      expect_close(host(be, dx), c.sp ? seq_slice(ref.dx, spec.in, c.p, r) : ref.dx, "dx");
      expect_close(host(be, params[0]->grad), shard_of(*params[0], ref.dw), "dW");
      expect_close(host(be, params[1]->grad), shard_of(*params[1], ref.db), "db");
    });
  }
}

TEST_P(TensorParallel, RowParallelLinearMatchesSerial) {
  const Case c = GetParam();
  const LinearSpec spec{"blocks.0.mlp.proj", 3 * c.p, 7, true, 0.5f};  // out 7 (odd)
  const auto w = randn(spec.out * spec.in, 11), b = randn(spec.out, 12), x = randn(B * T * spec.in, 13),
             dy = randn(B * T * spec.out, 14);
  const LinearRef ref = serial_linear(spec, w, b, x, dy);
  std::mutex mu;
  std::vector<float> db_sum(spec.out, 0.f);
  on_ranks(c.p, [&](Communicator& comm, Backend& be) {
    const int r = comm.rank();
    tp::RowParallelLinear lin(spec, tp::TpGroup{&comm, c.p, r, c.sp});
    std::vector<Param*> params;
    lin.collect_params(params);
    ASSERT_EQ(params.size(), 2u);
    EXPECT_EQ(params[0]->shape, (Shape{spec.out, spec.in / c.p}));
    EXPECT_FALSE(params[0]->tp_replicated);
    EXPECT_TRUE(params[1]->tp_replicated);
    FlatParams flat = materialize_with(params, be, {w, b});
    // This rank's input features: a [in] param split like the weight's columns.
    Param feature = nn::make_param("features", {spec.in}, InitKind::Zeros, 0.f, false, ShardSpec{0, r, c.p});
    Context ctx(be, 0);
    Tensor y = lin.forward(ctx, device(be, {B, T, spec.in / c.p}, column_slice(x, feature)));
    expect_close(host(be, y), c.sp ? seq_slice(ref.y, spec.out, c.p, r) : ref.y, "y");
    const auto dy_in = c.sp ? seq_slice(dy, spec.out, c.p, r) : dy;
    Tensor dx = lin.backward(ctx, device(be, y.shape(), dy_in));
    expect_close(host(be, dx), column_slice(ref.dx, feature), "dx");
    expect_close(host(be, params[0]->grad), shard_of(*params[0], ref.dw), "dW");
    const auto db = host(be, params[1]->grad);
    if (!c.sp) expect_close(db, ref.db, "db (replicated, whole tokens)");
    std::lock_guard<std::mutex> lock(mu);
    for (int64_t j = 0; j < spec.out; ++j) db_sum[j] += c.sp ? db[j] : db[j] / c.p;
  });
  // Under sequence parallelism each rank's bias gradient covers its tokens: the tp sum is the serial one.
  expect_close(db_sum, ref.db, "db summed over tp");
}

// ---------------------------------------------------------------- vocabulary-parallel embedding and loss

constexpr int64_t kVocab = 11, kPadded = 16, kDim = 5;

std::vector<int32_t> token_ids() {  // [B,T], every shard of 16 rows in 2 or 4 hit, repeats
  return {0, 15, 7, 7, 10, 3, 12, 5};
}
std::vector<int32_t> target_ids() {  // [B,T] < vocab; one ignored
  return {1, 10, 4, -1, 9, 0, 6, 3};
}

Tensor ids_device(Backend& be, const std::vector<int32_t>& v) {
  Tensor t = be.alloc({B, T}, DType::I32, MemCategory::Workspace);
  be.copy_from_host(t, v.data());
  return t;
}

TEST_P(TensorParallel, VocabParallelEmbeddingMatchesSerial) {
  const Case c = GetParam();
  const auto table = randn(kPadded * kDim, 21), dy = randn(B * T * kDim, 22);
  CpuBackend sbe(1);
  nn::Embedding serial("wte", kPadded, kDim);
  std::vector<Param*> sp;
  serial.collect_params(sp);
  FlatParams sflat = materialize_with(sp, sbe, {table});
  Context sctx(sbe, 0);
  const auto y_ref = host(sbe, serial.forward(sctx, ids_device(sbe, token_ids())));
  serial.backward(sctx, device(sbe, {B, T, kDim}, dy));
  const auto dtable_ref = host(sbe, serial.weight().grad);

  on_ranks(c.p, [&](Communicator& comm, Backend& be) {
    const int r = comm.rank();
    tp::VocabParallelEmbedding emb("wte", kPadded, kDim, 0.02f, tp::TpGroup{&comm, c.p, r, c.sp});
    std::vector<Param*> params;
    emb.collect_params(params);
    EXPECT_EQ(params[0]->shape, (Shape{kPadded / c.p, kDim}));
    FlatParams flat = materialize_with(params, be, {table});
    Context ctx(be, 0);
    Tensor y = emb.forward(ctx, ids_device(be, token_ids()));
    expect_close(host(be, y), c.sp ? seq_slice(y_ref, kDim, c.p, r) : y_ref, "embedding y");
    EXPECT_FALSE(emb.backward(ctx, device(be, y.shape(), c.sp ? seq_slice(dy, kDim, c.p, r) : dy)).defined());
    expect_close(host(be, params[0]->grad), shard_of(*params[0], dtable_ref), "embedding dtable");
  });
}

TEST_P(TensorParallel, VocabParallelCrossEntropyMatchesSerial) {
  const Case c = GetParam();
  const auto table = randn(kPadded * kDim, 31), x = randn(B * T * kDim, 32);
  const float dscale = 0.125f;
  CpuBackend sbe(1);
  nn::Embedding serial_table("wte", kPadded, kDim);
  std::vector<Param*> sp;
  serial_table.collect_params(sp);
  FlatParams sflat = materialize_with(sp, sbe, {table});
  nn::TiedOutputLoss serial(serial_table.weight(), kVocab);
  Context eval_ctx(sbe, 0);
  const auto logits_ref = host(sbe, serial.forward(eval_ctx, device(sbe, {B, T, kDim}, x)));
  Context sctx(sbe, 0);
  sctx.targets = ids_device(sbe, target_ids());
  sctx.dloss_scale = dscale;
  const auto loss_ref = host(sbe, serial.forward(sctx, device(sbe, {B, T, kDim}, x)));
  const auto dx_ref = host(sbe, serial.backward(sctx, Tensor()));
  const auto dtable_ref = host(sbe, serial_table.weight().grad);

  on_ranks(c.p, [&](Communicator& comm, Backend& be) {
    const int r = comm.rank();
    const tp::TpGroup group{&comm, c.p, r, c.sp};
    tp::VocabParallelEmbedding emb("wte", kPadded, kDim, 0.02f, group);
    std::vector<Param*> params;
    emb.collect_params(params);
    FlatParams flat = materialize_with(params, be, {table});
    tp::VocabParallelOutputLoss head(emb.weight(), kVocab, group);
    const auto x_in = c.sp ? seq_slice(x, kDim, c.p, r) : x;
    const Shape x_shape{B, c.sp ? T / c.p : T, kDim};
    Context eval_ctx(be, 0);  // no targets: the logits, gathered over the vocabulary
    expect_close(host(be, head.forward(eval_ctx, device(be, x_shape, x_in))), logits_ref, "logits");
    Context ctx(be, 0);
    ctx.targets = ids_device(be, target_ids());
    ctx.dloss_scale = dscale;
    Tensor losses = head.forward(ctx, device(be, x_shape, x_in));
    EXPECT_EQ(losses.shape(), (Shape{B, T}));
    expect_close(host(be, losses), loss_ref, "losses");
    Tensor dx = head.backward(ctx, Tensor());
    expect_close(host(be, dx), c.sp ? seq_slice(dx_ref, kDim, c.p, r) : dx_ref, "dx");
    expect_close(host(be, params[0]->grad), shard_of(*params[0], dtable_ref), "dtable");
  });
}

INSTANTIATE_TEST_SUITE_P(Layouts, TensorParallel,
                         ::testing::Values(Case{2, false}, Case{2, true}, Case{4, false}, Case{4, true}),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.label(); });

// ---------------------------------------------------------------- shard mapping

// A fused q|k|v weight [3*4, 2] over 2 ranks: rank 1 holds rows 2-3 of each
// block (logical rows 2,3, 6,7, 10,11); gathering both shards restores it.
TEST(ShardSpecTest, FusedBlocksTakeTheSameSliceOfEachBlock) {
  Param p = nn::make_param("qkv.weight", {12, 2}, InitKind::Zeros, 0.f, true, ShardSpec{0, 1, 2, 3});
  EXPECT_EQ(p.shape, (Shape{6, 2}));
  std::vector<int64_t> rows;
  for (int64_t e = 0; e < 12; e += 2) rows.push_back(logical_index(p, e) / 2);
  EXPECT_EQ(rows, (std::vector<int64_t>{2, 3, 6, 7, 10, 11}));
  std::vector<float> full(24);
  for (int i = 0; i < 24; ++i) full[i] = static_cast<float>(i);
  std::vector<float> shards;
  for (int r = 0; r < 2; ++r) {
    Param q = p;
    q.shard.index = r;
    const auto s = shard_of(q, full);
    shards.insert(shards.end(), s.begin(), s.end());
  }
  std::vector<float> back(24, -1.f);
  gather_shards_host(p, shards.data(), back.data());
  EXPECT_EQ(back, full);
}

}  // namespace
