#include "durable_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "weft/error.hpp"

namespace weft {

namespace {

constexpr size_t kStage = 1u << 20;        // staging buffer: whole blocks
constexpr size_t kMaxWrite = 64u << 20;    // one write() call at most
constexpr uint64_t kHandOff = 64u << 20;   // buffered fallback: let the disk write behind every 64 MiB

bool block_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kDiskBlock == 0; }

}  // namespace

void AlignedBytes::Free::operator()(char* p) const { std::free(p); }

AlignedBytes::AlignedBytes(size_t size, size_t misalign) {
  WEFT_ASSERT(misalign < kDiskBlock, "AlignedBytes: misalign beyond a block");
  capacity_ = (misalign + size + kDiskBlock - 1) / kDiskBlock * kDiskBlock;
  if (capacity_ == 0) capacity_ = kDiskBlock;
  base_.reset(static_cast<char*>(std::aligned_alloc(kDiskBlock, capacity_)));
  if (!base_) throw Error("cannot allocate " + std::to_string(capacity_) + " bytes of host memory");
  reshape(size, misalign);
}

void AlignedBytes::reshape(size_t size, size_t misalign) {
  WEFT_ASSERT(fits(size, misalign), "AlignedBytes: reshape beyond the capacity");
  size_ = size;
  data_ = base_.get() + misalign;
}

AlignedBytes AlignedBytesPool::take(size_t size, size_t misalign) {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t best = kept_.size();
  for (size_t i = 0; i < kept_.size(); ++i)
    if (kept_[i].fits(size, misalign) && (best == kept_.size() || kept_[i].capacity() < kept_[best].capacity()))
      best = i;
  if (best == kept_.size()) return AlignedBytes(size, misalign);
  AlignedBytes out = std::move(kept_[best]);
  kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(best));
  out.reshape(size, misalign);
  return out;
}

void AlignedBytesPool::give(AlignedBytes bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  kept_.push_back(std::move(bytes));
}

size_t AlignedBytesPool::kept_bytes() {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t n = 0;
  for (const AlignedBytes& b : kept_) n += b.capacity();
  return n;
}

DurableFile::DurableFile(std::string path) : path_(std::move(path)), stage_(kStage, 0) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0644);
  direct_ = fd_ >= 0;
  if (fd_ < 0 && errno == EINVAL) fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(path_ + ": cannot create file: " + std::strerror(errno));
}

DurableFile::~DurableFile() {
  if (fd_ >= 0) ::close(fd_);
}

void DurableFile::write_at(const char* data, size_t size, uint64_t offset) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd_, data, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && direct_) {
      // The filesystem took O_DIRECT at open but not for this write: ordinary writes from here on.
      direct_ = false;
      if (::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_DIRECT) == 0) continue;
    }
    if (n <= 0)
      throw Error(path_ + ": write failed after " + std::to_string(offset) + " bytes: " +
                  std::strerror(n < 0 ? errno : ENOSPC));
    data += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  if (!direct_ && offset - handed_ >= kHandOff) {
    ::sync_file_range(fd_, static_cast<off_t>(handed_), static_cast<off_t>(offset - handed_),
                      SYNC_FILE_RANGE_WRITE);  // a hint: fsync still decides
    handed_ = offset;
  }
}

// Writes the staged bytes: whole blocks, except the final call under O_DIRECT,
// which zero-pads the last block (finish() cuts the file back to size).
void DurableFile::flush_staged(bool final) {
  WEFT_ASSERT(final || staged_ % kDiskBlock == 0, "DurableFile: a partial block flushed early");
  size_t n = staged_;
  if (direct_ && final) {
    n = (staged_ + kDiskBlock - 1) / kDiskBlock * kDiskBlock;
    std::memset(stage_.data() + staged_, 0, n - staged_);
  }
  if (n == 0) return;
  write_at(stage_.data(), n, offset_);
  offset_ += staged_;
  staged_ = 0;
}

void DurableFile::append(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const bool at_block = staged_ % kDiskBlock == 0;
    if (at_block && size >= kDiskBlock && (!direct_ || block_aligned(p))) {
      flush_staged(false);
      const size_t n = std::min(direct_ ? size / kDiskBlock * kDiskBlock : size, kMaxWrite);
      write_at(p, n, offset_);
      offset_ += n;
      p += n;
      size -= n;
      continue;
    }
    // Up to the next block boundary (so an address congruent to its offset
    // continues without a copy), or to the end of the staging buffer.
    const size_t room = at_block ? kStage - staged_ : kDiskBlock - staged_ % kDiskBlock;
    const size_t take = std::min(size, room);
    std::memcpy(stage_.data() + staged_, p, take);
    staged_ += take;
    p += take;
    size -= take;
    if (staged_ == kStage) flush_staged(false);
  }
}

void DurableFile::finish() {
  const uint64_t total = size();
  flush_staged(true);
  bool ok = true;
  int err = 0;
  if (::ftruncate(fd_, static_cast<off_t>(total)) != 0) ok = false, err = errno;
  if (ok && ::fsync(fd_) != 0) ok = false, err = errno;
  if (::close(fd_) != 0 && ok) ok = false, err = errno;
  fd_ = -1;
  if (!ok) throw Error(path_ + ": write failed: " + std::strerror(err));
}

}  // namespace weft
