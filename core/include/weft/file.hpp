// Reading input files that someone else wrote. Only regular files are read:
// a FIFO, socket or device (a FIFO blocks open() forever, /dev/zero never
// ends) and a directory are refused with weft::Error naming the path, and
// sizes are checked while reading, so no input can hang or exhaust memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace weft {

class InputFile {
 public:
  // Opens without blocking; throws weft::Error "PATH: cannot open ..." or
  // "PATH: is a FIFO, not a regular file" (and so on).
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }  // at open time
  // Reads exactly n bytes at `offset`; throws weft::Error naming the offset when the file is shorter.
  void read_exact(uint64_t offset, void* out, size_t n) const;
  // The whole file; throws weft::Error when it holds more than max_bytes.
  std::string read_all(uint64_t max_bytes) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// InputFile(path).read_all(max_bytes).
std::string read_input_file(const std::string& path, uint64_t max_bytes);

// "a FIFO", "a directory", ...: what a path is when it is not a regular file; "" when it is one
// (or does not exist). Does not open the path.
std::string non_regular_kind(const std::string& path);

}  // namespace weft
