// Registers the "megatron" tensor_parallel plugin.
#include "megatron.hpp"
#include "weft/plugin.hpp"

namespace {

void register_tp(weft::Registry& registry) {
  registry.add<weft::LayerProvider>(
      "megatron", weft::tp::megatron_schema(),
      "Megatron-style tensor parallelism: column/row-parallel Linears, vocabulary-parallel embedding and loss, sequence parallelism",
      &weft::tp::make_megatron);
}

}  // namespace

WEFT_PLUGIN("tensor_parallel", "megatron", "0.1.0", register_tp)
