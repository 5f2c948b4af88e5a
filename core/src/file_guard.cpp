#include "weft/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "weft/error.hpp"

namespace weft {

namespace {

std::string kind_of(mode_t mode) {
  if (S_ISREG(mode)) return "";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "a special file";
}

std::string size_str(uint64_t bytes) {
  if (bytes >= (uint64_t(1) << 20) && bytes % (uint64_t(1) << 20) == 0)
    return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes) + " bytes";
}

}  // namespace

InputFile::InputFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd_, &st) == 0;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    std::string kind = stat_ok ? kind_of(st.st_mode) : std::string("not readable");
    ::close(fd_);
    fd_ = -1;
    throw Error(path + ": is " + kind + ", not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void InputFile::read_exact(uint64_t offset, void* out, size_t n) const {
  char* p = static_cast<char*>(out);
  size_t done = 0;
  while (done < n) {
    ssize_t got = ::pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw Error(path_ + ": offset " + std::to_string(offset + done) + ": " + std::strerror(errno));
    if (got == 0)
      throw Error(path_ + ": offset " + std::to_string(offset + done) + ": file ends " +
                  std::to_string(n - done) + " bytes early");
    done += static_cast<size_t>(got);
  }
}

std::string InputFile::read_all(uint64_t max_bytes) const {
  if (size_ > max_bytes)
    throw Error(path_ + ": " + std::to_string(size_) + " bytes, more than the " + size_str(max_bytes) + " allowed");
  // The size at open time is a hint only: the file may grow (or be a /proc file of size 0).
  std::string text;
  char buf[1 << 16];
  for (uint64_t offset = 0;;) {
    ssize_t got = ::pread(fd_, buf, sizeof buf, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw Error(path_ + ": offset " + std::to_string(offset) + ": " + std::strerror(errno));
    if (got == 0) break;
    offset += static_cast<uint64_t>(got);
    if (offset > max_bytes) throw Error(path_ + ": more than the " + size_str(max_bytes) + " allowed");
    text.append(buf, static_cast<size_t>(got));
  }
  return text;
}

std::string read_input_file(const std::string& path, uint64_t max_bytes) {
  return InputFile(path).read_all(max_bytes);
}

std::string non_regular_kind(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "";
  return kind_of(st.st_mode);
}

}  // namespace weft
