// Registers the "llama" model plugin (Llama and Qwen2 shapes).
#include "llama.hpp"
#include "weft/plugin.hpp"

namespace {

void register_llama(weft::Registry& registry) {
  registry.add<weft::Model>("llama", weft::llama::llama_schema(),
                            "Llama / Qwen2: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, "
                            "optional q/k/v biases and tied output head",
                            &weft::llama::make_llama);
}

}  // namespace

WEFT_PLUGIN("model", "llama", "0.1.0", register_llama)
