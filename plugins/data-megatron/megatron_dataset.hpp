// Dataset "megatron": Megatron-LM indexed datasets (PREFIX.bin + PREFIX.idx)
// read through mmap, cut into GPT samples as Megatron's GPTDataset does:
// the documents of the split part in a seeded order, concatenated as stored
// (preprocessing appends the end-of-document token), read as windows of
// seq_length + 1 tokens that start seq_length tokens apart (so consecutive
// windows share one token and cross document boundaries), visited in a
// seeded order; each epoch reshuffles both. Several prefixes blend with
// weights, each sample drawn from the prefix furthest behind its share.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "indexed_file.hpp"
#include "weft/dataset.hpp"
#include "weft/options.hpp"

namespace weft::megatron {

// "969,30,1" (or "969, 30, 1", "98/2/0") as the train/valid/test weights;
// throws weft::Error naming the text.
std::vector<double> parse_split(const std::string& text);
// Document boundaries [0, b1, b2, n] of the three parts, rounded as Megatron
// rounds them (each part gets round(weight * n), the last absorbs the rest).
std::vector<int64_t> split_bounds(const std::vector<double>& weights, int64_t documents);

// A permutation of [0, n) that maps any index without storing the
// permutation (a Feistel network over the next power of four, cycle-walked).
class IndexPermutation {
 public:
  IndexPermutation(int64_t n, uint64_t seed, uint64_t stream);
  int64_t operator()(int64_t i) const;

 private:
  int64_t n_;
  uint64_t seed_, stream_;
  int half_bits_;
};

// The GPT samples of documents [first, end) of one indexed file. A
// document's sequences stay together, in their stored order.
class GptSamples {
 public:
  GptSamples(std::shared_ptr<const IndexedFile> file, int64_t first, int64_t end, int64_t seq_length, uint64_t seed,
             uint64_t stream, int64_t vocab);
  int64_t size() const { return size_; }  // samples per epoch: (tokens - 1) / seq_length
  int64_t tokens() const { return tokens_; }
  int64_t documents() const { return end_ - first_; }
  void sample(int64_t i, int32_t* out) const;

 private:
  struct Epoch {
    std::vector<int64_t> order;  // document ids in visiting order
    std::vector<int64_t> start;  // [n + 1] token offset of each in the epoch's stream
  };
  int64_t document_tokens(int64_t d) const;
  // Tokens [offset, offset + n) of document d.
  void read_document(int64_t d, int64_t offset, int64_t n, int32_t* out) const;
  std::shared_ptr<const Epoch> epoch(int64_t e) const;

  std::shared_ptr<const IndexedFile> file_;
  int64_t first_, end_, seq_length_, vocab_;
  uint64_t seed_, stream_;
  int64_t tokens_ = 0, size_ = 0;
  mutable std::mutex mutex_;
  mutable int64_t cached_[2] = {-1, -1};
  mutable std::shared_ptr<const Epoch> cache_[2];
  mutable int next_ = 0;
};

class MegatronDataset final : public Dataset {
 public:
  static OptionSchema schema();
  MegatronDataset(const Options& options, const DatasetEnv& env);

  int64_t size() const override { return size_; }
  void sample(int64_t i, int32_t* tokens) const override;
  DatasetStats stats() const override { return {documents_, tokens_}; }

 private:
  void build_blend(const std::vector<double>& weights);

  std::vector<std::unique_ptr<GptSamples>> parts_;
  std::vector<uint32_t> blend_part_;   // [size_] the part sample i of an epoch comes from
  std::vector<int64_t> blend_local_;   // [size_] its index within that part's samples
  std::vector<int64_t> per_epoch_;     // samples each part gives per blended epoch
  int64_t size_ = 0, documents_ = 0, tokens_ = 0;
};

}  // namespace weft::megatron
