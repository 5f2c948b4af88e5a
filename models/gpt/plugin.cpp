// Registers the "gpt" model plugin.
#include "gpt.hpp"
#include "weft/plugin.hpp"

namespace {

void register_gpt(weft::Registry& registry) {
  registry.add<weft::Model>("gpt", weft::gpt::gpt_schema(),
                            "GPT-2: learned token/position embeddings, pre-LN blocks, GeLU MLP, "
                            "output head tied to the token embedding",
                            &weft::gpt::make_gpt);
}

}  // namespace

WEFT_PLUGIN("model", "gpt", "0.1.0", register_gpt)
