// Dataset "synthetic": uniform random tokens, sample i drawn from Philox keyed
// by (seed, i); for throughput runs and tests that need no files.
#pragma once

#include <cstdint>

#include "weft/dataset.hpp"
#include "weft/options.hpp"

namespace weft {

class SyntheticDataset final : public Dataset {
 public:
  static OptionSchema schema();
  SyntheticDataset(const Options& options, const DatasetEnv& env);
  // For tests and tools: explicit parameters.
  SyntheticDataset(int64_t vocab, int64_t size, int64_t seq_length, uint64_t seed);

  int64_t size() const override { return size_; }
  void sample(int64_t i, int32_t* tokens) const override;
  // Independent samples: no documents, T+1 tokens each.
  DatasetStats stats() const override { return {-1, size_ * (seq_length_ + 1)}; }
  int64_t vocab() const { return vocab_; }

 private:
  int64_t vocab_ = 0;
  int64_t size_ = 0;
  int64_t seq_length_ = 0;  // T; a sample has T+1 tokens
  uint64_t seed_ = 0;
};

}  // namespace weft
