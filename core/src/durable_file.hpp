// A new file written straight to the disk and synced before it counts as
// written. Bytes whose memory address matches their file offset modulo the
// 4 KiB block go to the disk without a copy (O_DIRECT); the rest pass through
// a small block-aligned staging buffer. Where the filesystem refuses O_DIRECT
// (tmpfs, some network filesystems) it falls back to ordinary writes, the
// disk writing behind every 64 MiB (sync_file_range).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace weft {

constexpr size_t kDiskBlock = 4096;

// Host memory whose data pointer sits `misalign` bytes past a block boundary,
// so that bytes bound for file offset F can live at an address congruent to F.
class AlignedBytes {
 public:
  AlignedBytes() = default;
  AlignedBytes(size_t size, size_t misalign);  // misalign < kDiskBlock
  char* data() { return data_; }
  const char* data() const { return data_; }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  // Room for `size` bytes at `misalign` without allocating again.
  bool fits(size_t size, size_t misalign) const { return misalign + size <= capacity_; }
  void reshape(size_t size, size_t misalign);  // requires fits()

 private:
  struct Free {
    void operator()(char* p) const;
  };
  std::unique_ptr<char, Free> base_;
  size_t capacity_ = 0, size_ = 0;
  char* data_ = nullptr;
};

// Buffers kept between uses: a checkpoint's tensors land in the memory the
// previous save used, so no save after the first faults in fresh pages (on a
// virtual machine the first touch of memory can cost more than the disk).
// Thread-safe.
class AlignedBytesPool {
 public:
  // The smallest kept buffer that holds size bytes at misalign, else a new one.
  AlignedBytes take(size_t size, size_t misalign);
  void give(AlignedBytes bytes);
  size_t kept_bytes();

 private:
  std::mutex mutex_;
  std::vector<AlignedBytes> kept_;
};

class DurableFile {
 public:
  explicit DurableFile(std::string path);  // creates or truncates; throws weft::Error "PATH: cannot create file: ..."
  ~DurableFile();                          // closes without syncing when finish() was not reached
  DurableFile(const DurableFile&) = delete;
  DurableFile& operator=(const DurableFile&) = delete;

  // Appends; throws weft::Error "PATH: write failed after N bytes: ..." (the caller removes the file).
  void append(const void* data, size_t size);
  // Writes what is staged, fsyncs and closes.
  void finish();
  uint64_t size() const { return offset_ + staged_; }

 private:
  void write_at(const char* data, size_t size, uint64_t offset);  // the whole range, or throws
  void flush_staged(bool final);
  std::string path_;
  int fd_ = -1;
  bool direct_ = false;
  AlignedBytes stage_;              // kStage bytes, block-aligned
  size_t staged_ = 0;               // bytes in stage_, bound for offset_
  uint64_t offset_ = 0, handed_ = 0;  // offset_: bytes on their way to the disk; handed_: synced up to
};

}  // namespace weft
