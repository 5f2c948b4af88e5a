#include "synthetic_dataset.hpp"

#include "weft/documents.hpp"

#include <string>

#include "weft/error.hpp"
#include "weft/rng.hpp"

namespace weft {

namespace {
// Folded into the Philox key so these draws differ from other users of the seed.
const uint64_t kSyntheticStream = name_key("weft.data.synthetic");
}  // namespace

OptionSchema SyntheticDataset::schema() {
  OptionSchema s = {
      opt_int("vocab", 0, "tokens are uniform in [0, vocab) (0 = the model's vocabulary)", 0),
      opt_int("size", int64_t{1} << 20, "samples per epoch", 1),
  };
  for (OptionSpec& o : document_mask_options()) s.push_back(std::move(o));  // [data] document masks
  return s;
}

SyntheticDataset::SyntheticDataset(const Options& options, const DatasetEnv& env)
    : size_(options.get_int("size")), seq_length_(env.seq_length), seed_(env.seed) {
  const int64_t vocab = options.get_int("vocab");
  // The model's vocabulary when known, else the tokenizer's.
  const int64_t model_vocab =
      env.vocab_size > 0 ? env.vocab_size : (env.tokenizer ? env.tokenizer->vocab_size() : 0);
  if (vocab < 0) options.fail("vocab", "must be >= 0 (0 = the model's vocabulary)");
  if (vocab == 0 && model_vocab <= 0) options.fail("vocab", "is 0 but there is no vocabulary to take it from");
  if (vocab > 0 && model_vocab > 0 && vocab > model_vocab)
    options.fail("vocab", std::to_string(vocab) + " exceeds the model's vocabulary of " +
                              std::to_string(model_vocab));
  if (vocab > (int64_t{1} << 31)) options.fail("vocab", "must be at most 2^31");
  if (size_ < 1) options.fail("size", "must be >= 1");
  if (seq_length_ <= 0)
    throw Error("data.synthetic: seq_length must be positive, got " + std::to_string(seq_length_));
  vocab_ = vocab > 0 ? vocab : model_vocab;
}

SyntheticDataset::SyntheticDataset(int64_t vocab, int64_t size, int64_t seq_length, uint64_t seed)
    : vocab_(vocab), size_(size), seq_length_(seq_length), seed_(seed) {
  WEFT_ASSERT(vocab > 0 && vocab <= (int64_t{1} << 31) && size > 0 && seq_length > 0,
              "synthetic dataset: bad parameters");
}

void SyntheticDataset::sample(int64_t i, int32_t* tokens) const {
  WEFT_ASSERT(i >= 0, "data.synthetic: negative sample index " + std::to_string(i));
  const int64_t n = seq_length_ + 1;
  const uint64_t key = seed_ ^ kSyntheticStream;
  uint32_t r[4];
  for (int64_t t = 0; t < n; ++t) {
    if (t % 4 == 0) philox4x32(key, static_cast<uint64_t>(i), static_cast<uint64_t>(t / 4), r);
    // Multiply-shift maps a 32-bit word onto [0, vocab).
    uint64_t word = r[t % 4];
    tokens[t] = static_cast<int32_t>((word * static_cast<uint64_t>(vocab_)) >> 32);
  }
}

}  // namespace weft
