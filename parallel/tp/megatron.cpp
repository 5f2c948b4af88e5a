#include "megatron.hpp"

#include <string>

#include "weft/error.hpp"
#include "weft/nn.hpp"

namespace weft::tp {

OptionSchema megatron_schema() {
  return {opt_bool("sequence_parallel", false,
                   "shard LayerNorm/dropout activations over the sequence dim of the tp group")};
}

MegatronOptions megatron_options(const Options& options) {
  MegatronOptions o;
  o.sequence_parallel = options.get_bool("sequence_parallel");
  return o;
}

MegatronLayerProvider::MegatronLayerProvider(const MegatronOptions& options, const ParallelEnv& env)
    : options_(options), env_(env), tp_(env.topology ? env.topology->sizes.tp : 1) {
  if (tp_ > 1)
    throw Error("parallel.tensor: tensor parallelism across " + std::to_string(tp_) +
                " ranks is not available in this build (tensor = 1 only)");
}

std::unique_ptr<Module> MegatronLayerProvider::column_linear(const LinearSpec& spec) {
  return std::make_unique<nn::Linear>(spec);
}

std::unique_ptr<Module> MegatronLayerProvider::row_linear(const LinearSpec& spec) {
  return std::make_unique<nn::Linear>(spec);
}

std::unique_ptr<LayerProvider> make_megatron(const Options& options, const ParallelEnv& env) {
  return std::make_unique<MegatronLayerProvider>(megatron_options(options), env);
}

}  // namespace weft::tp
