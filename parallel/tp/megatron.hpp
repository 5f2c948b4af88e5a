// Megatron-style tensor parallelism: the LayerProvider that builds the
// column- and row-parallel Linears of attention and MLP over the tp group.
// This build supports tp = 1 only (plain nn::Linear); sharded layers come later.
#pragma once

#include <memory>

#include "weft/layers.hpp"
#include "weft/options.hpp"

namespace weft::tp {

struct MegatronOptions {
  bool sequence_parallel = false;
};

OptionSchema megatron_schema();
MegatronOptions megatron_options(const Options& options);

class MegatronLayerProvider : public LayerProvider {
 public:
  // Throws weft::Error when the topology asks for tp > 1.
  MegatronLayerProvider(const MegatronOptions& options, const ParallelEnv& env);

  std::unique_ptr<Module> column_linear(const LinearSpec& spec) override;  // output features split over tp
  std::unique_ptr<Module> row_linear(const LinearSpec& spec) override;     // input features split over tp
  int tp_size() const override { return tp_; }
  bool sequence_parallel() const { return options_.sequence_parallel; }

 private:
  MegatronOptions options_;
  ParallelEnv env_;
  int tp_ = 1;
};

std::unique_ptr<LayerProvider> make_megatron(const Options& options, const ParallelEnv& env);

}  // namespace weft::tp
