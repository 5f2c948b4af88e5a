// safetensors files (the Hugging Face format): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {string: string}}, then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "durable_file.hpp"
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
// Streams a safetensors file whose tensor names and shapes are known up front:
// the header is written at once, then each tensor in layout order as it
// arrives. The bytes go to the disk on the writer's own thread while the caller
// collects the next tensors; finish() waits for them, fsyncs and renames PATH.tmp.PID
// into place. Host memory: the tensors queued and not yet written, at most
// 256 MiB (or one tensor, if larger) — unless `buffered`, where nothing waits
// for the disk (a save committed on another thread; everything may be queued).
// Written buffers go back to `pool` (its own if none), except when buffered.
// The destructor of an unfinished writer removes the temporary file.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, const std::vector<std::pair<std::string, Shape>>& layout,
                    const std::map<std::string, std::string>& metadata = {}, bool buffered = false,
                    std::shared_ptr<AlignedBytesPool> pool = nullptr);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // Memory for the next tensor of the layout (its numel floats), placed so that
  // the disk reads it without a copy; fill it and hand it to write().
  AlignedBytes next_buffer();
  // The next tensor of the layout (name and size checked), F32 row-major.
  // Throws the first write error of the writer's thread (buffered: finish() does).
  void write(const std::string& name, AlignedBytes values);
  void write(const std::string& name, const std::vector<float>& values);  // copies into next_buffer()
  void finish();
  uint64_t bytes() const { return bytes_; }

 private:
  void run();  // the writer's thread
  std::string path_, tmp_;
  std::vector<std::pair<std::string, Shape>> layout_;
  std::vector<uint64_t> offsets_;  // each tensor's file offset
  size_t next_ = 0;
  bool buffered_ = false;
  uint64_t bytes_ = 0;
  std::unique_ptr<DurableFile> file_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<AlignedBytes> queue_;  // written by run() in order
  std::shared_ptr<AlignedBytesPool> pool_;  // written buffers, for the next tensors
  uint64_t queued_bytes_ = 0;
  bool closing_ = false;
  std::string error_;  // run()'s first failure
  std::thread thread_;
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
