#include "megatron.hpp"

#include <string>

#include "weft/error.hpp"
#include "weft/nn.hpp"

namespace weft::tp {

OptionSchema megatron_schema() {
  return {opt_bool("sequence_parallel", false,
                   "run LayerNorms and residual adds on this rank's T/tensor slice of the sequence "
                   "(all-gather before column-parallel, reduce-scatter after row-parallel Linears)")};
}

MegatronOptions megatron_options(const Options& options, int tp) {
  MegatronOptions o;
  o.sequence_parallel = options.get_bool("sequence_parallel");
  if (o.sequence_parallel && tp == 1)
    options.fail("sequence_parallel", "sequence parallelism splits the sequence over the tensor-parallel ranks; "
                                      "it needs parallel.tensor > 1 (tensor is 1)");
  return o;
}

MegatronLayerProvider::MegatronLayerProvider(const MegatronOptions& options, const ParallelEnv& env)
    : options_(options),
      tp_(env.topology ? env.topology->sizes.tp : 1),
      rank_(env.topology ? env.topology->coords.tp : 0) {
  group_.comm = env.tp;
  group_.size = tp_;
  group_.rank = rank_;
  group_.sequence_parallel = options.sequence_parallel && tp_ > 1;
  WEFT_ASSERT(!env.tp || env.tp->size() == tp_, "megatron: the tp communicator does not match the topology");
}

std::unique_ptr<Module> MegatronLayerProvider::column_linear(const LinearSpec& spec) {
  if (tp_ == 1) return std::make_unique<nn::Linear>(spec);
  return std::make_unique<ColumnParallelLinear>(spec, group_);
}

std::unique_ptr<Module> MegatronLayerProvider::row_linear(const LinearSpec& spec) {
  if (tp_ == 1) return std::make_unique<nn::Linear>(spec);
  return std::make_unique<RowParallelLinear>(spec, group_);
}

std::unique_ptr<TableEmbedding> MegatronLayerProvider::embedding(const std::string& name, int64_t num, int64_t dim,
                                                                 float init_std) {
  if (tp_ == 1) return std::make_unique<nn::Embedding>(name, num, dim, init_std);
  return std::make_unique<VocabParallelEmbedding>(name, num, dim, init_std, group_);
}

std::unique_ptr<Module> MegatronLayerProvider::tied_output_loss(Param& table, int64_t vocab) {
  if (tp_ == 1) return std::make_unique<nn::TiedOutputLoss>(table, vocab);
  return std::make_unique<VocabParallelOutputLoss>(table, vocab, group_);
}

bool MegatronLayerProvider::grad_sums_over_tp(const Param& param) const {
  return group_.sequence_parallel && param.tp_replicated;
}

std::unique_ptr<LayerProvider> make_megatron(const Options& options, const ParallelEnv& env) {
  const int tp = env.topology ? env.topology->sizes.tp : 1;
  return std::make_unique<MegatronLayerProvider>(megatron_options(options, tp), env);
}

}  // namespace weft::tp
