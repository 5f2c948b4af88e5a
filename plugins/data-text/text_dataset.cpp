#include "text_dataset.hpp"

#include "weft/documents.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "weft/error.hpp"
#include "weft/file.hpp"
#include "weft/rng.hpp"

namespace weft {

namespace {

// Samples are int32 token ids held in memory: a single file beyond 16 GiB is a mistake.
constexpr uint64_t kMaxFileBytes = uint64_t(16) << 30;

bool is_blank_line(std::string_view line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\f' && c != '\v') return false;
  return true;
}

bool is_percent_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line == "%";
}

// Reads at most `limit` bytes (limit < 0: all) of `path`; throws via Options::fail.
// Only regular files: a FIFO would block and a device (/dev/zero) never ends.
std::string read_file(const Options& options, const std::string& path, int64_t limit) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    options.fail("files", "'" + path + "' is a directory, not a text file");
  try {
    InputFile file(path);
    if (limit >= 0 && file.size() > static_cast<uint64_t>(limit)) {
      std::string text(static_cast<size_t>(limit), '\0');
      file.read_exact(0, text.data(), text.size());
      return text;
    }
    return file.read_all(kMaxFileBytes);
  } catch (const Error& e) {
    options.fail("files", e.what());
  }
}

// Bytes of `text` outside valid UTF-8 sequences; `first` gets the offset of the first.
int64_t invalid_utf8_bytes(const std::string& text, int64_t& first) {
  int64_t invalid = 0;
  first = -1;
  for (size_t i = 0; i < text.size();) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c < 0xE0) ? 2 : (c >= 0xE0 && c < 0xF0) ? 3 : (c >= 0xF0 && c < 0xF5) ? 4 : 0;
    bool ok = len > 0 && i + len <= text.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    if (ok) {
      i += len;
      continue;
    }
    if (first < 0) first = static_cast<int64_t>(i);
    ++invalid;
    ++i;
  }
  return invalid;
}

// A NUL byte, or more than a tenth of the bytes outside UTF-8, is a binary
// file (an executable, token ids): tokenizing its bytes as text trains on noise.
void refuse_binary(const Options& options, const std::string& path, const std::string& text) {
  const char* hint = "; the text plugin reads UTF-8 text, binary token files need a dataset plugin that reads "
                     "them (`weft plugins dataset` lists those installed)";
  size_t nul = text.find('\0');
  if (nul != std::string::npos)
    options.fail("files", "'" + path + "' is not text: NUL byte at offset " + std::to_string(nul) + hint);
  int64_t first = -1;
  int64_t invalid = invalid_utf8_bytes(text, first);
  if (invalid * 10 > static_cast<int64_t>(text.size()))
    options.fail("files", "'" + path + "' is not text: " + std::to_string(invalid) + " of " +
                              std::to_string(text.size()) + " bytes are not UTF-8 (the first at offset " +
                              std::to_string(first) + ")" + hint);
}

DocumentSplit parse_split(const std::string& name) {
  if (name == "blank-line") return DocumentSplit::BlankLine;
  if (name == "percent-line") return DocumentSplit::PercentLine;
  return DocumentSplit::File;
}

// Stream of the shuffle's Philox counter: a fixed tag plus the epoch.
const uint64_t kShuffleStream = name_key("weft.data.text.shuffle");

}  // namespace

std::vector<std::string_view> split_documents(std::string_view text, DocumentSplit mode) {
  std::vector<std::string_view> docs;
  if (mode == DocumentSplit::File) {
    if (!text.empty()) docs.push_back(text);
    return docs;
  }
  size_t doc_begin = std::string_view::npos;  // start of the current document
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl + 1;  // past the line's newline
    std::string_view line = text.substr(pos, (nl == std::string_view::npos ? text.size() : nl) - pos);
    bool separator = mode == DocumentSplit::BlankLine ? is_blank_line(line) : is_percent_line(line);
    if (separator) {
      if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin, pos - doc_begin));
      doc_begin = std::string_view::npos;
    } else if (doc_begin == std::string_view::npos) {
      doc_begin = pos;
    }
    pos = end;
  }
  if (doc_begin != std::string_view::npos) docs.push_back(text.substr(doc_begin));
  return docs;
}

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) perm[static_cast<size_t>(k)] = k;
  for (int64_t j = n - 1; j > 0; --j) {
    uint32_t r[4];
    philox4x32(seed, kShuffleStream + static_cast<uint64_t>(epoch), static_cast<uint64_t>(j), r);
    uint64_t x = (static_cast<uint64_t>(r[0]) << 32) | r[1];
    int64_t pick = static_cast<int64_t>(x % static_cast<uint64_t>(j + 1));  // bias < 2^-40
    std::swap(perm[static_cast<size_t>(j)], perm[static_cast<size_t>(pick)]);
  }
  return perm;
}

OptionSchema TextDataset::schema() {
  OptionSchema s = {
      required(opt_paths("files", {}, "text files to train on (relative to the recipe file)")),
      opt_string("documents", "file",
                 "how files split into documents: file, blank-line, or percent-line (fortune files)",
                 {"file", "blank-line", "percent-line"}),
      opt_int("max_bytes", 0, "read at most this many bytes over all files (0 = all)", 0),
  };
  for (OptionSpec& o : document_mask_options()) s.push_back(std::move(o));  // [data] document masks
  return s;
}

TextDataset::TextDataset(const Options& options, const DatasetEnv& env)
    : seq_length_(env.seq_length), seed_(env.seed) {
  if (!env.tokenizer) throw Error("data.text: no tokenizer was configured");
  if (seq_length_ <= 0)
    throw Error("data.text: seq_length must be positive, got " + std::to_string(seq_length_));
  const std::vector<std::string>& files = options.get_strings("files");
  if (files.empty()) options.fail("files", "no text files given");
  const DocumentSplit mode = parse_split(options.get_string("documents"));
  const int64_t max_bytes = options.get_int("max_bytes");
  if (max_bytes < 0) options.fail("max_bytes", "must be >= 0 (0 = all)");

  const int32_t eot = env.tokenizer->eot();
  int64_t bytes_left = max_bytes > 0 ? max_bytes : -1;
  for (const std::string& path : files) {
    if (bytes_left == 0) break;
    std::string text = read_file(options, path, bytes_left);
    refuse_binary(options, path, text);
    if (bytes_left > 0) bytes_left -= static_cast<int64_t>(text.size());
    for (std::string_view doc : split_documents(text, mode)) {
      std::vector<int32_t> ids = env.tokenizer->encode(std::string(doc));
      tokens_.insert(tokens_.end(), ids.begin(), ids.end());
      tokens_.push_back(eot);
      ++documents_;
    }
  }

  const int64_t n = static_cast<int64_t>(tokens_.size());
  if (n < seq_length_ + 1) {
    options.fail("files", "the corpus has " + std::to_string(n) + " tokens (" + std::to_string(documents_) +
                              " documents from " + std::to_string(files.size()) + " file(s), first '" +
                              files.front() + "'); one sample needs seq_length + 1 = " +
                              std::to_string(seq_length_ + 1) + " tokens");
  }
  size_ = (n - 1) / seq_length_;
}

std::shared_ptr<const std::vector<int64_t>> TextDataset::order(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (int s = 0; s < 2; ++s)
    if (cached_epoch_[s] == epoch) return cached_order_[s];
  auto perm = std::make_shared<const std::vector<int64_t>>(seeded_permutation(size_, seed_, epoch));
  cached_epoch_[next_slot_] = epoch;
  cached_order_[next_slot_] = perm;
  next_slot_ ^= 1;
  return perm;
}

void TextDataset::sample(int64_t i, int32_t* tokens) const {
  WEFT_ASSERT(i >= 0, "data.text: negative sample index " + std::to_string(i));
  const int64_t epoch = i / size_;
  const int64_t k = (*order(epoch))[static_cast<size_t>(i % size_)];
  const int32_t* src = tokens_.data() + k * seq_length_;
  std::memcpy(tokens, src, static_cast<size_t>(seq_length_ + 1) * sizeof(int32_t));
}

}  // namespace weft
