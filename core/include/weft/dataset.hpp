// Dataset (family dataset: text, indexed, synthetic): a seeded order of
// fixed-length samples of seq_length+1 tokens (inputs = [0,T), targets = [1,T]).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/tokenizer.hpp"

namespace weft {

// What one epoch holds; -1 where a dataset does not know.
struct DatasetStats {
  int64_t documents = -1;
  int64_t tokens = -1;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  // Samples in one pass (an epoch); index i of the order wraps modulo this.
  virtual int64_t size() const = 0;
  // tokens[T+1] of the i-th sample of the seeded order (i may exceed size():
  // later epochs reshuffle with the epoch number).
  virtual void sample(int64_t i, int32_t* tokens) const = 0;
  // Documents and tokens read, for `weft check`.
  virtual DatasetStats stats() const { return {}; }
};

struct DatasetEnv {
  const Tokenizer* tokenizer = nullptr;
  int64_t seq_length = 0;
  uint64_t seed = 0;
  int64_t vocab_size = 0;  // the model's V (0: unknown, use the tokenizer's); token ids stay below it
};

template <>
struct FamilyTraits<Dataset> {
  static constexpr const char* kName = "dataset";
  using Factory = std::function<std::unique_ptr<Dataset>(const Options&, const DatasetEnv&)>;
};

}  // namespace weft
