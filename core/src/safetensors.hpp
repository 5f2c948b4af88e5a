// safetensors files (the Hugging Face format): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {string: string}}, then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
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

class SafetensorsReader {
 public:
  // Reads and validates the header; throws weft::Error "PATH: offset N: what" on malformed files.
  explicit SafetensorsReader(const std::string& path);
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  const Shape& shape(const std::string& name) const;
  std::vector<std::string> names() const;
  std::vector<float> read(const std::string& name) const;  // F32 tensors only
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
