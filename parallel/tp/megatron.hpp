// Megatron-style tensor parallelism: the LayerProvider that builds, over the
// tp group, column- and row-parallel Linears (attention and MLP), the
// vocabulary-parallel embedding and the vocabulary-parallel tied output with
// its cross entropy; optionally sequence parallelism between them.
//
// With tp = 1 it builds the plain nn layers, so one rank computes exactly what
// the serial model does. Shapes on tp rank r of p (letters as in weft/nn.hpp):
//   column-parallel W [out/p, in], b [out/p]       (a fused q|k|v: each block split)
//   row-parallel    W [out, in/p], b [out] (replicated, added after the reduction)
//   embedding table [Vp/p, C], rows [r*Vp/p, (r+1)*Vp/p)
// Activations between layers: [B,T,C], or [B,T/p,C] with sequence parallelism.
#pragma once

#include <memory>

#include "tp_layers.hpp"
#include "weft/layers.hpp"
#include "weft/options.hpp"

namespace weft::tp {

struct MegatronOptions {
  bool sequence_parallel = false;
};

OptionSchema megatron_schema();
// Throws (naming the key) when sequence parallelism is asked for with tensor = 1.
MegatronOptions megatron_options(const Options& options, int tp);

class MegatronLayerProvider : public LayerProvider {
 public:
  MegatronLayerProvider(const MegatronOptions& options, const ParallelEnv& env);

  std::unique_ptr<Module> column_linear(const LinearSpec& spec) override;  // output features split over tp
  std::unique_ptr<Module> row_linear(const LinearSpec& spec) override;     // input features split over tp
  std::unique_ptr<TableEmbedding> embedding(const std::string& name, int64_t num, int64_t dim,
                                            float init_std) override;
  std::unique_ptr<Module> tied_output_loss(Param& table, int64_t vocab) override;
  int tp_size() const override { return tp_; }
  int tp_rank() const override { return rank_; }
  bool sequence_parallel() const override { return options_.sequence_parallel; }
  // Replicated params (LayerNorms, row-parallel biases) see only this rank's
  // tokens under sequence parallelism.
  bool grad_sums_over_tp(const Param& param) const override;

 private:
  MegatronOptions options_;
  TpGroup group_;
  int tp_ = 1, rank_ = 0;
};

std::unique_ptr<LayerProvider> make_megatron(const Options& options, const ParallelEnv& env);

}  // namespace weft::tp
