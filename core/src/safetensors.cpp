#include "safetensors.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "weft/error.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace weft {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100u << 20;

void write_all_sync(const std::string& path, const std::vector<std::pair<const char*, size_t>>& chunks) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw Error(path + ": cannot create file: " + std::strerror(errno));
  bool ok = true;
  for (const auto& [data, size] : chunks)
    if (size && std::fwrite(data, 1, size, f) != size) ok = false;
  ok = std::fflush(f) == 0 && ok;
  ok = ::fsync(fileno(f)) == 0 && ok;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    std::remove(path.c_str());
    throw Error(path + ": write failed: " + std::strerror(errno));
  }
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  write_all_sync(tmp, {{text.data(), text.size()}});
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error(path + ": cannot rename into place: " + ec.message());
  }
}

void write_safetensors(const std::string& path, const std::vector<NamedArray>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    WEFT_ASSERT(static_cast<int64_t>(t.values.size()) == shape_numel(t.shape), "safetensors: " + t.name + " size");
    uint64_t bytes = t.values.size() * sizeof(float);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text += ' ';  // align the data to 8 bytes
  uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  std::vector<std::pair<const char*, size_t>> chunks = {{reinterpret_cast<const char*>(len), 8}, {text.data(), n}};
  for (const auto& t : tensors)
    chunks.push_back({reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float)});
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  write_all_sync(tmp, chunks);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error(path + ": cannot rename into place: " + ec.message());
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open checkpoint file");
  std::error_code ec;
  uint64_t file_size = fs::file_size(path, ec);
  unsigned char len[8];
  if (ec || file_size < 8 || !in.read(reinterpret_cast<char*>(len), 8))
    throw Error(path + ": offset 0: file too short for a safetensors header");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > kMaxHeaderBytes || 8 + n > file_size)
    throw Error(path + ": offset 0: header length " + std::to_string(n) + " exceeds the file (" +
                std::to_string(file_size) + " bytes)");
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": offset 8: malformed JSON header: " + e.what());
  }
  if (!header.is_object()) throw Error(path + ": offset 8: header is not a JSON object");
  uint64_t data_start = 8 + n;
  for (auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (value.is_object())
        for (auto& [k, v] : value.items())
          if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    try {
      Entry e;
      e.dtype = value.at("dtype").get<std::string>();
      e.shape = value.at("shape").get<Shape>();
      auto offsets = value.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1]) throw Error("bad data_offsets");
      e.begin = data_start + offsets[0];
      e.end = data_start + offsets[1];
      size_t elem = e.dtype == "F32" ? 4 : e.dtype == "F16" || e.dtype == "BF16" ? 2 : e.dtype == "I32" ? 4 : 8;
      for (int64_t d : e.shape)
        if (d < 0) throw Error("negative dimension");
      if (e.end > file_size) throw Error("data ends past the end of the file");
      if (e.end - e.begin != static_cast<uint64_t>(shape_numel(e.shape)) * elem)
        throw Error("data size does not match shape " + shape_str(e.shape));
      entries_[name] = e;
    } catch (const std::exception& ex) {
      throw Error(path + ": offset 8: tensor '" + name + "': " + ex.what());
    }
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
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(e.begin));
  if (!in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(e.end - e.begin)))
    throw Error(path_ + ": offset " + std::to_string(e.begin) + ": tensor '" + name + "' is truncated");
  return out;
}

}  // namespace weft
