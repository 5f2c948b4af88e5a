#include "adamw.hpp"

static void register_adamw(weft::Registry& r) {
  r.add<weft::Optimizer>("adamw", weft::AdamW::schema(), "Adam with decoupled weight decay (backend-fused)",
                         [](const weft::Options& options) -> std::unique_ptr<weft::Optimizer> {
                           return std::make_unique<weft::AdamW>(options);
                         });
}

WEFT_PLUGIN("optimizer", "adamw", "0.1.0", register_adamw)
