// Model (family model): an ordered list of layers that a pipeline schedule can
// partition into stages. Layer 0 takes token ids [B,T] (int32); the last
// layer returns per-token losses [B,T] and reads ctx.targets.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/layers.hpp"
#include "weft/module.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

struct ModelSummary {
  int64_t params = 0;                 // logical parameter count (tied counted once)
  int64_t flops_per_token = 0;        // forward+backward, 6N + attention
  int64_t act_bytes_per_sample = 0;   // saved activations of one sequence, all layers, on one tp rank
  int64_t seq_length = 0;
  int64_t hidden = 0;                 // C: activations between layers are [B,T,C]
  int64_t moe_layers = 0;             // blocks whose MLP is a mixture of experts (their stats are logged)
  int64_t moe_experts = 0;            // experts E of each such block (split over the ep ranks)
  int64_t vocab = 0;                  // V: token ids are in [0, V) (the tokenizer's or larger)
  int64_t padded_vocab = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  virtual std::vector<Module*> layers() = 0;
  virtual std::vector<Param*> params() = 0;  // this rank's, declaration order
  virtual ModelSummary summary() const = 0;
};

struct ModelEnv {
  int64_t vocab_size = 0;   // from the tokenizer
  uint64_t seed = 0;        // run.seed
  LayerProvider* layers = nullptr;
  const ParallelEnv* parallel = nullptr;
};

template <>
struct FamilyTraits<Model> {
  static constexpr const char* kName = "model";
  using Factory = std::function<std::unique_ptr<Model>(const Options&, const ModelEnv&)>;
};

}  // namespace weft
