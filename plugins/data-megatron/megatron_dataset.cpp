#include "megatron_dataset.hpp"

#include "weft/documents.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "weft/error.hpp"
#include "weft/rng.hpp"

namespace weft::megatron {

namespace {

const uint64_t kOrderStream = name_key("weft.data.megatron.documents");
const uint64_t kSampleStream = name_key("weft.data.megatron.samples");

bool parse_number(const std::string& text, double& value) {
  if (text.empty()) return false;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(value);
}

// Paths given in a recipe are relative to that recipe file; with --set, to the working directory.
std::string resolve(const Options& options, const std::string& path) {
  const std::string& from = options.where("paths").file;
  if (path.empty() || path.front() == '/' || from.empty() || from.rfind("--set", 0) == 0) return path;
  return (std::filesystem::path(from).parent_path() / path).lexically_normal().string();
}

// Fisher-Yates from Philox keyed by (seed, stream): the same on every machine.
std::vector<int64_t> shuffled(int64_t first, int64_t end, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> order;
  order.reserve(static_cast<size_t>(end - first));
  for (int64_t s = first; s < end; ++s) order.push_back(s);
  for (int64_t j = static_cast<int64_t>(order.size()) - 1; j > 0; --j) {
    uint32_t r[4];
    philox4x32(seed, stream, static_cast<uint64_t>(j), r);
    const uint64_t x = (static_cast<uint64_t>(r[0]) << 32) | r[1];
    std::swap(order[static_cast<size_t>(j)], order[static_cast<size_t>(x % static_cast<uint64_t>(j + 1))]);
  }
  return order;
}

}  // namespace

std::vector<double> parse_split(const std::string& text) {
  std::vector<double> weights;
  std::string item;
  auto flush = [&] {
    std::string t;
    for (char c : item)
      if (c != ' ') t += c;
    double v = 0;
    if (!parse_number(t, v) || v < 0) throw Error("split '" + text + "': '" + t + "' is not a number >= 0");
    weights.push_back(v);
    item.clear();
  };
  for (char c : text) {
    if (c == ',' || c == '/') flush();
    else item += c;
  }
  flush();
  if (weights.size() > 3) throw Error("split '" + text + "': at most three parts (train, valid, test)");
  while (weights.size() < 3) weights.push_back(0);
  double sum = weights[0] + weights[1] + weights[2];
  if (!(sum > 0)) throw Error("split '" + text + "': the weights sum to 0");
  for (double& w : weights) w /= sum;
  return weights;
}

std::vector<int64_t> split_bounds(const std::vector<double>& weights, int64_t documents) {
  std::vector<int64_t> bounds{0};
  for (double w : weights)
    bounds.push_back(bounds.back() + static_cast<int64_t>(std::nearbyint(w * static_cast<double>(documents))));
  const int64_t diff = bounds.back() - documents;
  for (size_t k = 1; k < bounds.size(); ++k) bounds[k] = std::clamp<int64_t>(bounds[k] - diff, 0, documents);
  return bounds;
}

IndexPermutation::IndexPermutation(int64_t n, uint64_t seed, uint64_t stream)
    : n_(n), seed_(seed), stream_(stream), half_bits_(1) {
  while ((int64_t(1) << (2 * half_bits_)) < n_) ++half_bits_;
}

int64_t IndexPermutation::operator()(int64_t i) const {
  if (n_ <= 1) return 0;
  const uint64_t mask = (uint64_t(1) << half_bits_) - 1;
  uint64_t x = static_cast<uint64_t>(i);
  do {  // a bijection of [0, 4^h); walking its cycle until back in [0, n) keeps it one on [0, n)
    uint64_t left = x >> half_bits_, right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      uint32_t r[4];
      philox4x32(seed_, stream_, (round << 40) | right, r);
      const uint64_t next = left ^ (r[0] & mask);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= static_cast<uint64_t>(n_));
  return static_cast<int64_t>(x);
}

GptSamples::GptSamples(std::shared_ptr<const IndexedFile> file, int64_t first, int64_t end, int64_t seq_length,
                       uint64_t seed, uint64_t stream, int64_t vocab)
    : file_(std::move(file)), first_(first), end_(end), seq_length_(seq_length), vocab_(vocab), seed_(seed),
      stream_(stream) {
  for (int64_t d = first_; d < end_; ++d) tokens_ += document_tokens(d);
  size_ = tokens_ > 0 ? (tokens_ - 1) / seq_length_ : 0;
}

int64_t GptSamples::document_tokens(int64_t d) const {
  int64_t n = 0;
  for (int64_t s = file_->document_start(d); s < file_->document_start(d + 1); ++s) n += file_->length(s);
  return n;
}

void GptSamples::read_document(int64_t d, int64_t offset, int64_t n, int32_t* out) const {
  for (int64_t s = file_->document_start(d); n > 0 && s < file_->document_start(d + 1); ++s) {
    const int64_t len = file_->length(s);
    if (offset >= len) {
      offset -= len;
      continue;
    }
    const int64_t take = std::min(n, len - offset);
    file_->read(s, offset, take, vocab_, out);
    out += take;
    n -= take;
    offset = 0;
  }
}

std::shared_ptr<const GptSamples::Epoch> GptSamples::epoch(int64_t e) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (int s = 0; s < 2; ++s)
    if (cached_[s] == e) return cache_[s];
  auto made = std::make_shared<Epoch>();
  made->order = shuffled(first_, end_, seed_, kOrderStream + stream_ + static_cast<uint64_t>(e));
  made->start.reserve(made->order.size() + 1);
  int64_t at = 0;
  for (int64_t d : made->order) {
    made->start.push_back(at);
    at += document_tokens(d);
  }
  made->start.push_back(at);
  cached_[next_] = e;
  cache_[next_] = made;
  next_ ^= 1;
  return made;
}

void GptSamples::sample(int64_t i, int32_t* out) const {
  WEFT_ASSERT(i >= 0 && size_ > 0, "megatron: sample index " + std::to_string(i));
  const int64_t e = i / size_;
  const IndexPermutation perm(size_, seed_, kSampleStream + stream_ + static_cast<uint64_t>(e));
  int64_t pos = perm(i % size_) * seq_length_;  // the window's first token in the epoch's stream
  auto ep = epoch(e);
  // The document holding `pos`: the last whose start is <= pos.
  size_t k = static_cast<size_t>(std::upper_bound(ep->start.begin(), ep->start.end(), pos) - ep->start.begin()) - 1;
  int64_t need = seq_length_ + 1;
  while (need > 0) {
    WEFT_ASSERT(k < ep->order.size(), "megatron: a window ran past the epoch's tokens");
    const int64_t offset = pos - ep->start[k];
    const int64_t take = std::min<int64_t>(need, ep->start[k + 1] - pos);
    read_document(ep->order[k], offset, take, out);
    out += take;
    need -= take;
    pos += take;
    ++k;
  }
}

OptionSchema MegatronDataset::schema() {
  OptionSchema s = {
      weighted_table(required(opt_strings("paths", {},
                                          "prefixes of PREFIX.bin + PREFIX.idx (relative to the recipe file), or a "
                                          "blend [\"0.3\", \"a\", \"0.7\", \"b\"] as Megatron's --data-path, or "
                                          "{ \"a\" = 0.3, \"b\" = 0.7 }"))),
      opt_string("split", "969,30,1", "train,valid,test weights of each prefix's documents, as Megatron's --split"),
      opt_string("part", "train", "the split part to read: train, valid or test", {"train", "valid", "test"}),
  };
  for (OptionSpec& o : document_mask_options()) s.push_back(std::move(o));  // [data] document masks
  return s;
}

MegatronDataset::MegatronDataset(const Options& options, const DatasetEnv& env) {
  if (env.seq_length <= 0) throw Error("data.megatron: seq_length must be positive");
  const int64_t vocab = env.vocab_size > 0 ? env.vocab_size : (env.tokenizer ? env.tokenizer->vocab_size() : 0);
  if (vocab <= 0) throw Error("data.megatron: no vocabulary size (configure a tokenizer)");

  // paths: either all prefixes, or number/prefix pairs.
  const std::vector<std::string>& items = options.get_strings("paths");
  if (items.empty()) options.fail("paths", "no prefixes given");
  std::vector<std::string> prefixes;
  std::vector<double> weights;
  double first_weight = 0;
  if (items.size() % 2 == 0 && parse_number(items[0], first_weight)) {
    for (size_t k = 0; k < items.size(); k += 2) {
      double w = 0;
      if (!parse_number(items[k], w) || w < 0)
        options.fail("paths", "blend weight '" + items[k] + "' (item " + std::to_string(k) + ") is not a number >= 0");
      weights.push_back(w);
      prefixes.push_back(items[k + 1]);
    }
  } else {
    prefixes = items;
  }

  std::vector<double> split;
  try {
    split = parse_split(options.get_string("split"));
  } catch (const Error& e) {
    options.fail("split", e.what());
  }
  const std::string& part = options.get_string("part");
  const int which = part == "train" ? 0 : part == "valid" ? 1 : 2;

  for (size_t k = 0; k < prefixes.size(); ++k) {
    auto file = std::make_shared<const IndexedFile>(resolve(options, prefixes[k]));
    const std::vector<int64_t> bounds = split_bounds(split, file->documents());
    documents_ += bounds[which + 1] - bounds[which];
    auto samples = std::make_unique<GptSamples>(file, bounds[which], bounds[which + 1], env.seq_length, env.seed,
                                                static_cast<uint64_t>(k) << 32, vocab);
    if (samples->size() == 0)
      options.fail("paths", "'" + file->prefix() + "': the " + part + " part (split " + options.get_string("split") +
                                ") holds " + std::to_string(samples->tokens()) + " tokens in " +
                                std::to_string(bounds[which + 1] - bounds[which]) +
                                " documents; one sample needs seq_length + 1 = " + std::to_string(env.seq_length + 1));
    tokens_ += samples->tokens();
    parts_.push_back(std::move(samples));
  }
  if (weights.empty())  // no weights: each prefix in proportion to its size
    for (const auto& p : parts_) weights.push_back(static_cast<double>(p->size()));
  build_blend(weights);
}

void MegatronDataset::build_blend(const std::vector<double>& weights) {
  if (parts_.size() == 1) {
    size_ = parts_[0]->size();
    return;
  }
  double sum = 0;
  for (double w : weights) sum += w;
  if (!(sum > 0)) throw Error("data.megatron: the blend weights sum to 0");
  for (const auto& p : parts_) size_ += p->size();
  // Megatron's greedy blending: each sample goes to the part furthest behind its share.
  per_epoch_.assign(parts_.size(), 0);
  blend_part_.resize(static_cast<size_t>(size_));
  blend_local_.resize(static_cast<size_t>(size_));
  for (int64_t i = 0; i < size_; ++i) {
    const double x = std::max<double>(static_cast<double>(i), 1.0);
    size_t best = 0;
    double best_error = weights[0] / sum * x - static_cast<double>(per_epoch_[0]);
    for (size_t d = 1; d < parts_.size(); ++d) {
      const double error = weights[d] / sum * x - static_cast<double>(per_epoch_[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    blend_part_[static_cast<size_t>(i)] = static_cast<uint32_t>(best);
    blend_local_[static_cast<size_t>(i)] = per_epoch_[best]++;
  }
}

void MegatronDataset::sample(int64_t i, int32_t* tokens) const {
  WEFT_ASSERT(i >= 0, "data.megatron: negative sample index " + std::to_string(i));
  if (parts_.size() == 1) return parts_[0]->sample(i, tokens);
  const int64_t e = i / size_, j = i % size_;
  const uint32_t d = blend_part_[static_cast<size_t>(j)];
  parts_[d]->sample(blend_local_[static_cast<size_t>(j)] + e * per_epoch_[d], tokens);
}

}  // namespace weft::megatron
