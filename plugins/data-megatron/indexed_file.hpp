// One Megatron indexed dataset: PREFIX.idx (the MMIDIDX index) and PREFIX.bin
// (the token ids), mapped read-only. Every count, length, pointer and the
// document index are checked against the file sizes when the files open, so
// later reads stay inside the mappings; a fault is a weft::Error naming the
// file and the byte offset.
//
// .idx layout (little-endian): "MMIDIDX\0\0", u64 version = 1, u8 dtype code,
// u64 sequence count S, u64 document-index count D, i32 lengths[S],
// i64 byte pointers into .bin [S], i64 document index [D] (0, ..., S).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace weft::megatron {

// A read-only mapping of a whole regular file (empty files map to nothing).
class Mapping {
 public:
  explicit Mapping(const std::string& path);
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const unsigned char* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

// Megatron's dtype codes (indexed_dataset.DType).
enum DTypeCode : uint8_t {
  kUint8 = 1, kInt8 = 2, kInt16 = 3, kInt32 = 4, kInt64 = 5, kFloat64 = 6, kFloat32 = 7, kUint16 = 8
};
// Bytes per element of a code; 0 for an unknown code.
size_t dtype_size(uint8_t code);
// The dtype preprocess_data.py picks: uint16 below 65500 tokens, else int32.
uint8_t dtype_for_vocab(int64_t vocab_size);

class IndexedFile {
 public:
  // Opens PREFIX.idx and PREFIX.bin; throws weft::Error on any inconsistency.
  explicit IndexedFile(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  uint8_t dtype() const { return dtype_; }
  int64_t sequences() const { return sequences_; }
  int64_t documents() const { return doc_count_ - 1; }
  int64_t tokens() const { return tokens_; }
  int32_t length(int64_t seq) const;
  // First sequence of document d (d in [0, documents()]; d = documents() gives sequences()).
  int64_t document_start(int64_t d) const;
  // Tokens [offset, offset + n) of sequence `seq` as ids checked to lie in
  // [0, vocab); throws weft::Error naming the .bin offset of an id outside.
  void read(int64_t seq, int64_t offset, int64_t n, int64_t vocab, int32_t* out) const;

 private:
  void check_header();
  void check_sequences();
  void check_document_index();
  [[noreturn]] void fail_idx(uint64_t offset, const std::string& message) const;

  std::string prefix_;
  Mapping idx_;
  Mapping bin_;
  uint8_t dtype_ = 0;
  size_t item_ = 0;
  int64_t sequences_ = 0;
  int64_t doc_count_ = 0;
  int64_t tokens_ = 0;
  uint64_t lengths_at_ = 0, pointers_at_ = 0, docs_at_ = 0;  // byte offsets in .idx
};

}  // namespace weft::megatron
