#include "safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "weft/error.hpp"
#include "weft/file.hpp"
#include "weft/half.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace weft {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;

}  // namespace

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    DurableFile file(tmp);
    file.append(text.data(), text.size());
    file.finish();
  } catch (const Error&) {
    std::remove(tmp.c_str());
    throw;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error(path + ": cannot rename into place: " + ec.message());
  }
}

void write_safetensors(const std::string& path, const std::vector<NamedArray>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Shape>> layout;
  for (const auto& t : tensors) layout.push_back({t.name, t.shape});
  SafetensorsWriter out(path, layout, metadata);
  for (const auto& t : tensors) out.write(t.name, t.values);
  out.finish();
}

constexpr uint64_t kMaxQueuedBytes = 64u << 20;

SafetensorsWriter::SafetensorsWriter(std::string path, const std::vector<std::pair<std::string, Shape>>& layout,
                                     const std::map<std::string, std::string>& metadata, bool buffered,
                                     std::shared_ptr<AlignedBytesPool> pool)
    : path_(std::move(path)),
      tmp_(path_ + ".tmp." + std::to_string(::getpid())),
      layout_(layout),
      buffered_(buffered),
      pool_(pool ? std::move(pool) : std::make_shared<AlignedBytesPool>()) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, shape] : layout_) {
    const uint64_t bytes = static_cast<uint64_t>(shape_numel(shape)) * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offsets_.push_back(offset);
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text += ' ';  // align the data to 8 bytes
  for (uint64_t& o : offsets_) o += 8 + text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  file_ = std::make_unique<DurableFile>(tmp_);
  try {
    file_->append(len, 8);
    file_->append(text.data(), text.size());
  } catch (const Error&) {
    file_.reset();
    std::remove(tmp_.c_str());
    throw;
  }
  bytes_ = 8 + text.size();
  thread_ = std::thread([this] { run(); });
}

SafetensorsWriter::~SafetensorsWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
    error_ = error_.empty() ? "abandoned" : error_;  // run() drops what is still queued
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (!file_) return;
  file_.reset();
  std::remove(tmp_.c_str());
}

void SafetensorsWriter::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return closing_ || !queue_.empty(); });
    if (queue_.empty()) return;
    AlignedBytes item = std::move(queue_.front());
    queue_.pop_front();
    if (error_.empty()) {
      lock.unlock();
      std::string failure;
      try {
        file_->append(item.data(), item.size());
      } catch (const std::exception& e) {
        failure = e.what();
      }
      lock.lock();
      if (error_.empty()) error_ = failure;
    }
    queued_bytes_ -= item.size();
    if (!buffered_) pool_->give(std::move(item));
    changed_.notify_all();
  }
}

AlignedBytes SafetensorsWriter::next_buffer() {
  WEFT_ASSERT(next_ < layout_.size(), "safetensors writer: " + path_ + " has no tensor left to write");
  const size_t size = static_cast<size_t>(shape_numel(layout_[next_].second)) * sizeof(float);
  const size_t misalign = offsets_[next_] % kDiskBlock;
  std::unique_lock<std::mutex> lock(mutex_);
  // Wait for the disk while more than kMaxQueuedBytes are queued (not when
  // buffered); then a written buffer is free to take the tensor.
  changed_.wait(lock, [&] {
    return !error_.empty() || buffered_ || queue_.empty() || queued_bytes_ + size <= kMaxQueuedBytes;
  });
  if (!error_.empty() && !buffered_) throw Error(error_);  // buffered: finish() reports it
  lock.unlock();
  return pool_->take(size, misalign);
}

void SafetensorsWriter::write(const std::string& name, AlignedBytes values) {
  WEFT_ASSERT(next_ < layout_.size() && layout_[next_].first == name &&
                  values.size() == static_cast<size_t>(shape_numel(layout_[next_].second)) * sizeof(float),
              "safetensors writer: " + name + " is not the next tensor of the layout");
  ++next_;
  bytes_ += values.size();
  std::lock_guard<std::mutex> lock(mutex_);
  if (!error_.empty() && !buffered_) throw Error(error_);  // buffered: finish() reports it
  queued_bytes_ += values.size();
  queue_.push_back(std::move(values));
  changed_.notify_all();
}

void SafetensorsWriter::write(const std::string& name, const std::vector<float>& values) {
  WEFT_ASSERT(next_ < layout_.size() && layout_[next_].first == name &&
                  static_cast<int64_t>(values.size()) == shape_numel(layout_[next_].second),
              "safetensors writer: " + name + " is not the next tensor of the layout");
  AlignedBytes buffer = next_buffer();
  std::memcpy(buffer.data(), values.data(), buffer.size());
  write(name, std::move(buffer));
}

void SafetensorsWriter::finish() {
  WEFT_ASSERT(next_ == layout_.size(), "safetensors writer: " + path_ + " finished before its last tensor");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  changed_.notify_all();
  thread_.join();
  if (!error_.empty()) throw Error(error_);  // the destructor removes the file
  file_->finish();
  file_.reset();
  std::error_code ec;
  fs::rename(tmp_, path_, ec);
  if (ec) {
    fs::remove(tmp_, ec);
    throw Error(path_ + ": cannot rename into place: " + ec.message());
  }
}

namespace {

size_t dtype_bytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  throw Error("unknown dtype '" + dtype + "'");
}

// Each dimension a non-negative JSON integer; the byte size computed without overflow.
uint64_t checked_shape_bytes(const json& shape_json, size_t elem, Shape& shape) {
  if (!shape_json.is_array()) throw Error("shape is not an array");
  uint64_t bytes = elem;
  for (const json& d : shape_json) {
    if (!d.is_number_unsigned()) throw Error("shape " + shape_json.dump() + ": dimensions must be integers >= 0");
    uint64_t n = d.get<uint64_t>();
    if (n > static_cast<uint64_t>(INT64_MAX) || (n != 0 && bytes > UINT64_MAX / n))
      throw Error("shape " + shape_json.dump() + " overflows");
    bytes *= n;
    shape.push_back(static_cast<int64_t>(n));
  }
  return bytes;
}

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  InputFile file(path);  // a FIFO or device is refused here, without blocking
  const uint64_t file_size = file.size();
  unsigned char len[8];
  if (file_size < 8) throw Error(path + ": offset 0: file too short for a safetensors header");
  file.read_exact(0, len, 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > kMaxHeaderBytes || n > file_size - 8)
    throw Error(path + ": offset 0: header length " + std::to_string(n) + " exceeds the file (" +
                std::to_string(file_size) + " bytes)");
  std::string text(n, '\0');
  file.read_exact(8, text.data(), n);
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": offset 8: malformed JSON header: " + e.what());
  }
  if (!header.is_object()) throw Error(path + ": offset 8: header is not a JSON object");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;
  std::vector<std::pair<uint64_t, std::string>> extents;  // (begin, name) of the non-empty tensors
  for (auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (value.is_object())
        for (auto& [k, v] : value.items())
          if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    try {
      if (!value.is_object()) throw Error("not a JSON object");
      Entry e;
      const json& dtype = value.at("dtype");
      if (!dtype.is_string()) throw Error("dtype is not a string");
      e.dtype = dtype.get<std::string>();
      uint64_t bytes = checked_shape_bytes(value.at("shape"), dtype_bytes(e.dtype), e.shape);
      const json& offsets = value.at("data_offsets");
      if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
          !offsets[1].is_number_unsigned())
        throw Error("data_offsets " + offsets.dump() + " is not two integers >= 0");
      uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
      if (begin > end) throw Error("data_offsets " + offsets.dump() + " end before they begin");
      if (end > data_size)
        throw Error("data ends past the end of the file (data_offsets " + offsets.dump() + ", " +
                    std::to_string(data_size) + " data bytes)");
      if (end - begin != bytes)
        throw Error("data size " + std::to_string(end - begin) + " does not match shape " + shape_str(e.shape) +
                    " (" + std::to_string(bytes) + " bytes)");
      e.begin = data_start + begin;
      e.end = data_start + end;
      if (bytes > 0) extents.push_back({begin, name});
      entries_[name] = e;
    } catch (const std::exception& ex) {
      throw Error(path + ": offset 8: tensor '" + name + "': " + ex.what());
    }
  }
  // No two tensors may share bytes.
  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i) {
    const Entry& prev = entries_[extents[i - 1].second];
    if (prev.end > data_start + extents[i].first)
      throw Error(path + ": offset 8: tensor '" + extents[i].second + "': data overlaps tensor '" +
                  extents[i - 1].second + "'");
  }
}

const SafetensorsReader::Entry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path_ + ": no tensor named '" + name + "'");
  return it->second;
}

const Shape& SafetensorsReader::shape(const std::string& name) const { return entry(name).shape; }

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) out.push_back(k);
  return out;
}

std::vector<float> SafetensorsReader::read(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype != "F32") throw Error(path_ + ": tensor '" + name + "' is " + e.dtype + ", expected F32");
  std::vector<float> out(shape_numel(e.shape));
  try {
    InputFile(path_).read_exact(e.begin, out.data(), e.end - e.begin);
  } catch (const Error&) {
    throw Error(path_ + ": offset " + std::to_string(e.begin) + ": tensor '" + name + "' is truncated");
  }
  return out;
}

std::vector<float> SafetensorsReader::read_widened(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.dtype == "F32") return read(name);
  if (e.dtype != "BF16" && e.dtype != "F16")
    throw Error(path_ + ": tensor '" + name + "' is " + e.dtype + ", expected F32, BF16 or F16");
  std::vector<uint16_t> half(shape_numel(e.shape));
  try {
    InputFile(path_).read_exact(e.begin, half.data(), e.end - e.begin);
  } catch (const Error&) {
    throw Error(path_ + ": offset " + std::to_string(e.begin) + ": tensor '" + name + "' is truncated");
  }
  std::vector<float> out(half.size());
  const bool bf16 = e.dtype == "BF16";
  for (size_t i = 0; i < half.size(); ++i) out[i] = bf16 ? bf16_to_float(half[i]) : f16_to_float(half[i]);
  return out;
}

}  // namespace weft
