#include "indexed_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "weft/error.hpp"
#include "weft/file.hpp"

namespace weft::megatron {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // the mapping gives no alignment promise
  return v;
}

// One stored id as an integer; false for a float that is not a whole number.
bool id_at(const unsigned char* p, uint8_t code, int64_t& id) {
  switch (code) {
    case kUint8: id = load<uint8_t>(p); return true;
    case kInt8: id = load<int8_t>(p); return true;
    case kInt16: id = load<int16_t>(p); return true;
    case kInt32: id = load<int32_t>(p); return true;
    case kInt64: id = load<int64_t>(p); return true;
    case kUint16: id = load<uint16_t>(p); return true;
    case kFloat64:
    case kFloat32: {
      double v = code == kFloat64 ? load<double>(p) : load<float>(p);
      if (!(std::fabs(v) < 9e15) || std::floor(v) != v) return false;
      id = static_cast<int64_t>(v);
      return true;
    }
    default: return false;
  }
}

}  // namespace

Mapping::Mapping(const std::string& path) : path_(path) {
  // A FIFO would block open() and a device never ends: regular files only.
  std::string kind = non_regular_kind(path);
  if (!kind.empty()) throw Error(path + ": is " + kind + ", not a regular file");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error(path + ": cannot map " + std::to_string(size_) + " bytes: " + std::strerror(err));
    }
    data_ = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
}

Mapping::~Mapping() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
}

size_t dtype_size(uint8_t code) {
  switch (code) {
    case kUint8: case kInt8: return 1;
    case kInt16: case kUint16: return 2;
    case kInt32: case kFloat32: return 4;
    case kInt64: case kFloat64: return 8;
    default: return 0;
  }
}

uint8_t dtype_for_vocab(int64_t vocab_size) { return vocab_size < 65500 ? kUint16 : kInt32; }

IndexedFile::IndexedFile(const std::string& prefix)
    : prefix_(prefix), idx_(prefix + ".idx"), bin_(prefix + ".bin") {
  check_header();
  check_sequences();
  check_document_index();
}

void IndexedFile::fail_idx(uint64_t offset, const std::string& message) const {
  throw Error(idx_.path() + ": offset " + std::to_string(offset) + ": " + message);
}

void IndexedFile::check_header() {
  const unsigned char* p = idx_.data();
  if (idx_.size() < kHeaderBytes)
    fail_idx(idx_.size(), "truncated: the header needs " + std::to_string(kHeaderBytes) + " bytes, the file has " +
                              std::to_string(idx_.size()));
  if (std::memcmp(p, kMagic, sizeof kMagic) != 0)
    fail_idx(0, "wrong magic: not a Megatron MMIDIDX index (expected \"MMIDIDX\\0\\0\")");
  const uint64_t version = load<uint64_t>(p + 9);
  if (version != 1) fail_idx(9, "unsupported version " + std::to_string(version) + " (weft reads version 1)");
  dtype_ = p[17];
  item_ = dtype_size(dtype_);
  if (item_ == 0)
    fail_idx(17, "unknown dtype code " + std::to_string(dtype_) + " (Megatron's codes are 1..8)");
  const uint64_t s = load<uint64_t>(p + 18), d = load<uint64_t>(p + 26);
  // Bound the counts by the file size first, so the sums below cannot overflow.
  const uint64_t room = idx_.size() - kHeaderBytes;
  if (s > room / 12) fail_idx(18, "sequence count " + std::to_string(s) + " does not fit in the file (truncated?)");
  if (d > room / 8) fail_idx(26, "document count " + std::to_string(d) + " does not fit in the file (truncated?)");
  if (d == 0) fail_idx(26, "document count is 0: the document index must start with 0");
  sequences_ = static_cast<int64_t>(s);
  doc_count_ = static_cast<int64_t>(d);
  lengths_at_ = kHeaderBytes;
  pointers_at_ = lengths_at_ + 4 * s;
  docs_at_ = pointers_at_ + 8 * s;
  const uint64_t end = docs_at_ + 8 * d;
  // Newer Megatron may append one mode byte per sequence (multimodal data).
  if (idx_.size() != end && idx_.size() != end + s)
    fail_idx(std::min<uint64_t>(end, idx_.size()),
             "size mismatch: " + std::to_string(s) + " sequences and " + std::to_string(d) +
                 " document-index entries need " + std::to_string(end) + " bytes, the file has " +
                 std::to_string(idx_.size()) + (idx_.size() < end ? " (truncated)" : ""));
}

void IndexedFile::check_sequences() {
  const unsigned char* p = idx_.data();
  tokens_ = 0;
  for (int64_t i = 0; i < sequences_; ++i) {
    const uint64_t at_len = lengths_at_ + 4 * static_cast<uint64_t>(i);
    const uint64_t at_ptr = pointers_at_ + 8 * static_cast<uint64_t>(i);
    const int32_t len = load<int32_t>(p + at_len);
    const int64_t ptr = load<int64_t>(p + at_ptr);
    if (len < 0) fail_idx(at_len, "sequence " + std::to_string(i) + " has negative length " + std::to_string(len));
    const uint64_t bytes = static_cast<uint64_t>(len) * item_;
    if (ptr < 0 || static_cast<uint64_t>(ptr) > bin_.size() || bytes > bin_.size() - static_cast<uint64_t>(ptr))
      fail_idx(at_ptr, "sequence " + std::to_string(i) + " (" + std::to_string(len) + " tokens at byte " +
                           std::to_string(ptr) + ") lies past the end of " + bin_.path() + " (" +
                           std::to_string(bin_.size()) + " bytes)");
    tokens_ += len;
  }
}

void IndexedFile::check_document_index() {
  const unsigned char* p = idx_.data();
  int64_t previous = 0;
  for (int64_t k = 0; k < doc_count_; ++k) {
    const uint64_t at = docs_at_ + 8 * static_cast<uint64_t>(k);
    const int64_t v = load<int64_t>(p + at);
    if (k == 0 && v != 0) fail_idx(at, "the document index starts with " + std::to_string(v) + ", not 0");
    if (v < previous)
      fail_idx(at, "the document index is not monotone: entry " + std::to_string(k) + " is " + std::to_string(v) +
                       " after " + std::to_string(previous));
    if (v > sequences_)
      fail_idx(at, "document index entry " + std::to_string(k) + " is " + std::to_string(v) + ", past the " +
                       std::to_string(sequences_) + " sequences");
    previous = v;
  }
  if (previous != sequences_)
    fail_idx(docs_at_ + 8 * static_cast<uint64_t>(doc_count_ - 1),
             "the document index ends at " + std::to_string(previous) + ", not at the sequence count " +
                 std::to_string(sequences_));
}

int32_t IndexedFile::length(int64_t seq) const {
  WEFT_ASSERT(seq >= 0 && seq < sequences_, "megatron: sequence index out of range");
  return load<int32_t>(idx_.data() + lengths_at_ + 4 * static_cast<uint64_t>(seq));
}

int64_t IndexedFile::document_start(int64_t d) const {
  WEFT_ASSERT(d >= 0 && d < doc_count_, "megatron: document index out of range");
  return load<int64_t>(idx_.data() + docs_at_ + 8 * static_cast<uint64_t>(d));
}

void IndexedFile::read(int64_t seq, int64_t offset, int64_t n, int64_t vocab, int32_t* out) const {
  WEFT_ASSERT(offset >= 0 && n >= 0 && offset + n <= length(seq), "megatron: read past a sequence");
  const int64_t ptr = load<int64_t>(idx_.data() + pointers_at_ + 8 * static_cast<uint64_t>(seq));
  const uint64_t start = static_cast<uint64_t>(ptr) + static_cast<uint64_t>(offset) * item_;
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t at = start + static_cast<uint64_t>(k) * item_;
    int64_t id = 0;
    if (!id_at(bin_.data() + at, dtype_, id) || id < 0 || id >= vocab)
      throw Error(bin_.path() + ": offset " + std::to_string(at) + ": token id " +
                  (id_at(bin_.data() + at, dtype_, id) ? std::to_string(id) : std::string("(not an integer)")) +
                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    out[k] = static_cast<int32_t>(id);
  }
}

}  // namespace weft::megatron
