// Model (family model): an ordered list of layers that a pipeline schedule can
// partition into stages. Layer 0 takes token ids [B,T] (int32); the last
// layer returns per-token losses [B,T] and reads ctx.targets.
#pragma once

#include <charconv>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "weft/error.hpp"
#include "weft/layers.hpp"
#include "weft/module.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

struct ModelSummary {
  int64_t params = 0;                 // logical parameter count (tied counted once)
  int64_t flops_per_token = 0;        // forward+backward, 6N + attention
  int64_t act_bytes_per_sample = 0;   // saved activations of one sequence, all layers, on one tp rank
  // The same when the compute dtype is 16-bit (bf16, f16: the tensors the model
  // keeps in the compute dtype count 2 bytes); 0: the model does not say, and
  // estimates take act_bytes_per_sample.
  int64_t act16_bytes_per_sample = 0;
  int64_t seq_length = 0;
  int64_t hidden = 0;                 // C: activations between layers are [B,T,C]
  int64_t moe_layers = 0;             // blocks whose MLP is a mixture of experts (their stats are logged)
  int64_t moe_experts = 0;            // experts E of each such block (split over the ep ranks)
  int64_t vocab = 0;                  // V: token ids are in [0, V) (the tokenizer's or larger)
  int64_t padded_vocab = 0;
};

// Hugging Face transformers' form of a model (docs/checkpoints.md): what
// `weft export --format hf` writes (config.json, model.safetensors) and
// `[model] init_from` reads back. The model says it; the core knows no names.
struct HfTensor {
  std::string param;       // weft's logical name
  std::string hf;          // Hugging Face's name
  bool transpose = false;  // a matrix stored [in, out] (GPT-2's Conv1D): hf = param^T
  int64_t rows = 0;        // > 0: only the first `rows` rows (the V real rows of a padded [Vp, C] table)
};
struct HfConfigEntry {
  HfConfigEntry(std::string key, std::string json, bool must_match = false, std::string absent = "",
                std::string option = "")
      : key(std::move(key)), json(std::move(json)), must_match(must_match), absent(std::move(absent)),
        option(std::move(option)) {}
  std::string key;
  std::string json;         // the value as JSON text: 128, 1e-05, "silu", ["LlamaForCausalLM"]
  bool must_match = false;  // init_from refuses a config.json whose value differs
  std::string absent;       // must_match: the value Hugging Face assumes when the key is missing ("" = required)
  std::string option;       // the [model] option it comes from, named in refusals ("" = none)
};
struct HfLayout {
  std::string architecture;           // config.json "architectures"[0], e.g. "LlamaForCausalLM"
  std::vector<std::string> readable;  // the architectures this model plugin reads (init_from)
  std::vector<HfConfigEntry> config;  // config.json after "architectures", in this order
  std::vector<HfTensor> tensors;      // model.safetensors, in this order
};

// A float as the shortest JSON number that reads back to it: 1e-05, 10000.0.
inline std::string hf_json_number(float v) {
  char buf[32];
  std::string s(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

class Model {
 public:
  virtual ~Model() = default;
  virtual std::vector<Module*> layers() = 0;
  virtual std::vector<Param*> params() = 0;  // this rank's, declaration order
  virtual ModelSummary summary() const = 0;
  // This model as Hugging Face lays it out; throws weft::Error (one line: why
  // not, e.g. mixture-of-experts blocks) when it has no such form.
  virtual HfLayout hugging_face() const { throw Error("this model has no Hugging Face form"); }
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
