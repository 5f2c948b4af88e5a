#include "sgd.hpp"

static void register_sgd(weft::Registry& r) {
  r.add<weft::Optimizer>("sgd", weft::Sgd::schema(), "SGD with (Nesterov) momentum and weight decay, host backends",
                         [](const weft::Options& options) -> std::unique_ptr<weft::Optimizer> {
                           return std::make_unique<weft::Sgd>(options);
                         });
}

WEFT_PLUGIN("optimizer", "sgd", "0.1.0", register_sgd)
