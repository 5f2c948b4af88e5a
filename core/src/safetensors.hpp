// safetensors files (the Hugging Face format): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {string: string}}, then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "weft/tensor.hpp"

namespace weft {

struct NamedArray {
  std::string name;
  Shape shape;
  std::vector<float> values;  // F32, row-major
};

// Writes `path` (via a temporary file and rename). Throws weft::Error naming the path.
void write_safetensors(const std::string& path, const std::vector<NamedArray>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a safetensors file tensor by tensor: the header goes first (every
// name and shape is known up front), then each tensor's bytes as they come, so
// the caller holds one tensor at a time. finish() flushes, fsyncs and renames
// the temporary file into place; a writer destroyed unfinished removes it.
class SafetensorsWriter {
 public:
  // buffered: the bytes stay in memory until finish() (a save written on another thread).
  SafetensorsWriter(std::string path, const std::vector<std::pair<std::string, Shape>>& layout,
                    const std::map<std::string, std::string>& metadata = {}, bool buffered = false);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // The next tensor of the layout (name checked), F32 row-major.
  void write(const std::string& name, const std::vector<float>& values);
  void finish();
  uint64_t bytes() const { return written_; }

 private:
  void put(const void* data, size_t size);
  std::string path_, tmp_;
  std::vector<std::pair<std::string, Shape>> layout_;
  size_t next_ = 0;
  std::FILE* file_ = nullptr;
  bool buffered_ = false;
  std::string buffer_;  // buffered: everything, written by finish()
  uint64_t written_ = 0;
};

class SafetensorsReader {
 public:
  // Reads and validates the header; throws weft::Error "PATH: offset N: what" on malformed files.
  explicit SafetensorsReader(const std::string& path);
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const Shape& shape(const std::string& name) const;
  std::vector<std::string> names() const;
  std::vector<float> read(const std::string& name) const;  // F32 tensors only
  // F32, BF16 or F16 tensors as F32 (16-bit values widened exactly).
  std::vector<float> read_widened(const std::string& name) const;
  const std::string& dtype(const std::string& name) const { return entry(name).dtype; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    std::string dtype;
    Shape shape;
    uint64_t begin = 0, end = 0;  // absolute file offsets
  };
  const Entry& entry(const std::string& name) const;
  std::string path_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `text` to `path` atomically (temporary file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace weft
