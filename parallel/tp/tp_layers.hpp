// The layers tensor parallelism shards, over a tp group of p ranks (this one
// rank r). Each module keeps the communication its sharding needs inside its
// forward/backward, so blocks built from them need no knowledge of tp.
//
// Without sequence parallelism (sp):
//   ColumnParallel  fwd identity on x, bwd all-reduce of dx
//   RowParallel     fwd all-reduce of y (bias added after), bwd identity
// With sp, the replicated [B,T,C] side becomes this rank's [B,T/p,C] slice:
//   ColumnParallel  fwd all-gather of x along T, bwd reduce-scatter of dx
//   RowParallel     fwd reduce-scatter of y along T, bwd all-gather of dy
// Vocabulary-parallel embedding: masked lookup of this rank's rows, then the
// row-parallel reduction; the output layer: logits stay split by vocabulary,
// the loss takes a max and two sums over tp and never gathers [N,Vp].
#pragma once

#include <string>

#include "weft/comm.hpp"
#include "weft/layers.hpp"
#include "weft/nn.hpp"

namespace weft::tp {

struct TpGroup {
  Communicator* comm = nullptr;  // the tp group; null only for models never run (estimates)
  int size = 1;                  // p
  int rank = 0;                  // r
  bool sequence_parallel = false;
};

// x [B,T/p,C] on every rank -> [B,T,C] (rank r's slice at positions r*T/p).
Tensor gather_sequence(Backend& be, Communicator& tp, const Tensor& x, MemCategory category);
// x [B,T,C] partial sums -> this rank's slice [B,T/p,C] of their sum.
Tensor reduce_scatter_sequence(Backend& be, Communicator& tp, const Tensor& x, MemCategory category);

// y [..., out/p] = x [..., in] W_r^T + b_r. Params "<name>.weight" [out/p, in],
// "<name>.bias" [out/p], rows taken from each of spec.fused_blocks blocks.
class ColumnParallelLinear : public Module {
 public:
  ColumnParallelLinear(const LinearSpec& spec, const TpGroup& group);
  Tensor forward(Context& ctx, const Tensor& x) override;    // x [B,T,in] or sp [B,T/p,in] -> [B,T,out/p]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [B,T,out/p] -> dx like x
  void collect_params(std::vector<Param*>& out) override;

 private:
  TpGroup group_;
  int64_t in_, out_local_;
  bool has_bias_;
  Param weight_;  // [out/p, in]
  Param bias_;    // [out/p]
};

// y [..., out] = reduce_r(x_r [..., in/p] W_r^T) + b. Params "<name>.weight"
// [out, in/p] (columns split), "<name>.bias" [out] (replicated).
class RowParallelLinear : public Module {
 public:
  RowParallelLinear(const LinearSpec& spec, const TpGroup& group);
  Tensor forward(Context& ctx, const Tensor& x) override;    // x [B,T,in/p] -> [B,T,out] or sp [B,T/p,out]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy like y -> dx [B,T,in/p]
  void collect_params(std::vector<Param*>& out) override;

 private:
  TpGroup group_;
  int64_t in_local_, out_;
  bool has_bias_;
  Param weight_;  // [out, in/p]
  Param bias_;    // [out]
};

// Table "<name>.weight" [num/p, C]: rows [r*num/p, (r+1)*num/p) of the vocabulary.
class VocabParallelEmbedding : public TableEmbedding {
 public:
  VocabParallelEmbedding(const std::string& name, int64_t num, int64_t dim, float init_std, const TpGroup& group);
  Tensor forward(Context& ctx, const Tensor& ids) override;  // ids [B,T] -> [B,T,C] or sp [B,T/p,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // -> undefined
  void collect_params(std::vector<Param*>& out) override { out.push_back(&weight_); }
  Param& weight() override { return weight_; }

 private:
  TpGroup group_;
  int64_t dim_;
  Param weight_;  // [num/p, C]
};

// Logits [B,T,Vp/p] = x @ table_r^T, vocabulary-parallel cross entropy over
// the first `vocab` logical columns: losses [B,T] on every rank.
class VocabParallelOutputLoss : public Module {
 public:
  VocabParallelOutputLoss(Param& table, int64_t vocab, const TpGroup& group);
  Tensor forward(Context& ctx, const Tensor& x) override;    // x [B,T,C] or sp [B,T/p,C] -> losses [B,T]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy ignored -> dx like x
  void collect_params(std::vector<Param*>& /*out*/) override {}  // the table belongs to the embedding

 private:
  Tensor gather_logits(Backend& be, const Tensor& logits);  // [B,T,Vp/p] -> [B,T,Vp] (eval only)

  Param& table_;  // [Vp/p, C], this rank's rows
  int64_t vocab_;
  TpGroup group_;
};

}  // namespace weft::tp
