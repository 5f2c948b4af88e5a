// Dataset "text": plain-text files tokenized into one stream
// (doc0 eot doc1 eot ...), cut into non-overlapping samples of T+1 tokens
// (sample k = tokens [k*T, k*T + T]), visited in a seeded order that is
// reshuffled every epoch.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "weft/dataset.hpp"
#include "weft/options.hpp"

namespace weft {

enum class DocumentSplit { File, BlankLine, PercentLine };

// The documents of one file's text. File: the whole text; BlankLine: runs of
// lines separated by empty (or whitespace-only) lines; PercentLine: runs of
// lines separated by lines that are exactly "%" (fortune files). Lines keep
// their newlines; empty documents are dropped.
std::vector<std::string_view> split_documents(std::string_view text, DocumentSplit mode);

// A permutation of [0, n) drawn by a Fisher-Yates shuffle from Philox keyed by
// (seed, epoch): the same on every machine.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, int64_t epoch);

class TextDataset final : public Dataset {
 public:
  static OptionSchema schema();
  TextDataset(const Options& options, const DatasetEnv& env);

  int64_t size() const override { return size_; }
  void sample(int64_t i, int32_t* tokens) const override;
  DatasetStats stats() const override { return {documents_, static_cast<int64_t>(tokens_.size())}; }

  const std::vector<int32_t>& tokens() const { return tokens_; }  // the whole stream
  int64_t documents() const { return documents_; }
  int64_t seq_length() const { return seq_length_; }

 private:
  std::shared_ptr<const std::vector<int64_t>> order(int64_t epoch) const;

  std::vector<int32_t> tokens_;  // [N] doc0 eot doc1 eot ...
  int64_t documents_ = 0;
  int64_t seq_length_ = 0;      // T
  int64_t size_ = 0;            // samples per epoch: (N - 1) / T
  uint64_t seed_ = 0;

  // The orders of the two most recently used epochs.
  mutable std::mutex mutex_;
  mutable int64_t cached_epoch_[2] = {-1, -1};
  mutable std::shared_ptr<const std::vector<int64_t>> cached_order_[2];
  mutable int next_slot_ = 0;
};

}  // namespace weft
