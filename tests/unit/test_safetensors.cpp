// safetensors writer/reader: round trip against the values written, the
// byte layout the format specifies, and refusals of damaged files with the
// path and the offset.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>

#include <csignal>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "safetensors.hpp"
#include "weft/error.hpp"

namespace fs = std::filesystem;

namespace {

fs::path temp_file(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("weft-st-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

std::string error_of(const std::string& path) {
  try {
    weft::SafetensorsReader r(path);
  } catch (const weft::Error& e) {
    return e.what();
  }
  return "";
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string with_header(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + json + data;
}

// ---- safetensors offsets, sizes and shapes -------------------------------------------------

TEST(SafetensorsHostile, RefusesWrappingOverlappingAndFractionalEntries) {
  const std::string data(16, '\x01');
  struct Case {
    const char* name;
    std::string header;
    const char* expect;
  };
  const std::vector<Case> cases = {
      // The header is padded to 200 bytes, so the data starts at 208: offsets 2^64 - 208 and
      // 2^64 - 200 wrap around to 0 and 8, the first 8 bytes of the file.
      {"wrap", R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551408,18446744073709551416]}})",
       "tensor 'x'"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       "overlaps"},
      {"fractional offsets", R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0.5,8.5]}})", "tensor 'x'"},
      {"fractional shape", R"({"x":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", "tensor 'x'"},
      {"negative shape", R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "tensor 'x'"},
      {"shape overflow",
       R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "tensor 'x'"},
      {"unknown dtype", R"({"x":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", "unknown dtype"},
  };
  for (const Case& c : cases) {
    fs::path p = temp_file("hostile.safetensors");
    write_bytes(p, with_header(c.header + std::string(200 - c.header.size(), ' '), data));
    std::string err = error_of(p.string());
    EXPECT_NE(err.find(p.string() + ": offset 8: "), std::string::npos) << c.name << ": " << err;
    EXPECT_NE(err.find(c.expect), std::string::npos) << c.name << ": " << err;
  }
}

TEST(SafetensorsHostile, RefusesAFifoWithoutBlocking) {
  fs::path fifo = temp_file("fifo.safetensors");
  fs::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of(fifo.string()).find("FIFO"), std::string::npos);
  fs::remove(fifo);
}

}  // namespace

TEST(Safetensors, RoundTripAndLayout) {
  fs::path p = temp_file("a.safetensors");
  std::vector<weft::NamedArray> tensors = {{"b.weight", {2, 3}, {1, 2, 3, 4, 5, 6.5f}},
                                           {"a", {1}, {-0.25f}}};
  weft::write_safetensors(p.string(), tensors, {{"format", "weft"}});
  weft::SafetensorsReader r(p.string());
  EXPECT_EQ(r.shape("b.weight"), (weft::Shape{2, 3}));
  EXPECT_EQ(r.read("b.weight"), tensors[0].values);
  EXPECT_EQ(r.read("a"), tensors[1].values);
  EXPECT_EQ(r.metadata().at("format"), "weft");

  // Independent parse of the bytes: LE header length, JSON, data at the offsets.
  std::ifstream in(p, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ((8 + n) % 8, 0u);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["b.weight"]["dtype"], "F32");
  auto off = header["a"]["data_offsets"].get<std::vector<uint64_t>>();
  float v;
  std::memcpy(&v, bytes.data() + 8 + n + off[0], 4);
  EXPECT_EQ(v, -0.25f);
  EXPECT_EQ(bytes.size(), 8 + n + 7 * 4);
  // No temporary file is left behind.
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

// read_widened: BF16 and F16 values (1.5, -2, 0.1 rounded) widen exactly to F32; read() stays F32-only.
TEST(Safetensors, ReadWidenedTakesBf16AndF16) {
  const std::string bf16 = std::string("\xc0\x3f\x00\xc0\xcd\x3d", 6);  // 0x3fc0 0xc000 0x3dcd
  const std::string f16 = std::string("\x00\x3e\x00\xc0\x66\x2e", 6);   // 0x3e00 0xc000 0x2e66
  const fs::path p = temp_file("widen.safetensors");
  write_bytes(p, with_header(R"({"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
                             R"("b":{"dtype":"F16","shape":[3],"data_offsets":[6,12]}})",
                             bf16 + f16));
  weft::SafetensorsReader r(p.string());
  EXPECT_EQ(r.dtype("a"), "BF16");
  EXPECT_EQ(r.read_widened("a"), (std::vector<float>{1.5f, -2.f, 0.10009765625f}));
  EXPECT_EQ(r.read_widened("b"), (std::vector<float>{1.5f, -2.f, 0.0999755859375f}));
  EXPECT_THROW(r.read("a"), weft::Error);
}

TEST(Safetensors, DamagedFilesAreRefusedWithPathAndOffset) {
  fs::path p = temp_file("bad.safetensors");
  write_bytes(p, "abc");
  EXPECT_NE(error_of(p.string()).find(p.string() + ": offset 0: file too short"), std::string::npos);
  write_bytes(p, with_header(std::string(100, ' '), "").substr(0, 8) + std::string(4, 'x'));
  EXPECT_NE(error_of(p.string()).find("exceeds the file"), std::string::npos) << error_of(p.string());
  write_bytes(p, with_header("{not json", ""));
  EXPECT_NE(error_of(p.string()).find(p.string() + ": offset 8: malformed JSON header"), std::string::npos);
  write_bytes(p, with_header(R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", "12345678"));
  EXPECT_NE(error_of(p.string()).find("tensor 'x': data ends past the end of the file"), std::string::npos)
      << error_of(p.string());
  write_bytes(p, with_header(R"({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", "12345678"));
  EXPECT_NE(error_of(p.string()).find("does not match shape [3]"), std::string::npos) << error_of(p.string());
  write_bytes(p, with_header(R"({"x": {"dtype": "F32", "shape": "oops", "data_offsets": [0, 8]}})", "12345678"));
  EXPECT_NE(error_of(p.string()).find("tensor 'x'"), std::string::npos) << error_of(p.string());
  EXPECT_NE(error_of((p.parent_path() / "missing.safetensors").string()).find("cannot open"), std::string::npos);
  fs::remove_all(p.parent_path());
}

// ---- the streaming writer ---------------------------------------------------------------------

namespace {

// Values no two tensors share, so a misplaced byte shows.
std::vector<float> pattern(size_t n, int tensor) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(tensor * 1000003 + static_cast<int>(i % 999983)) * 0.5f;
  return v;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// Writes `sizes` (floats per tensor) through the writer, tensor i through
// next_buffer() when i is even and from a std::vector when odd, and checks
// the file against bytes assembled here: the header the file declares (its
// offsets contiguous, in layout order) followed by every tensor's bytes.
void check_stream(const fs::path& p, const std::vector<size_t>& sizes, bool buffered,
                  std::shared_ptr<weft::AlignedBytesPool> pool) {
  std::vector<std::pair<std::string, weft::Shape>> layout;
  for (size_t i = 0; i < sizes.size(); ++i)
    layout.push_back({"t" + std::to_string(i), {static_cast<int64_t>(sizes[i])}});
  std::string expected_data;
  {
    weft::SafetensorsWriter w(p.string(), layout, {{"format", "weft"}}, buffered, pool);
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<float> v = pattern(sizes[i], static_cast<int>(i));
      expected_data.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
      if (i % 2 == 0) {
        weft::AlignedBytes b = w.next_buffer();
        ASSERT_EQ(b.size(), v.size() * sizeof(float));
        std::memcpy(b.data(), v.data(), b.size());
        w.write(layout[i].first, std::move(b));
      } else {
        w.write(layout[i].first, v);
      }
    }
    w.finish();
  }
  const std::string bytes = file_bytes(p);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  ASSERT_LE(8 + n, bytes.size());
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  uint64_t at = 0;
  for (const auto& [name, shape] : layout) {
    auto off = header.at(name).at("data_offsets").get<std::vector<uint64_t>>();
    EXPECT_EQ(off[0], at) << name;
    at = off[1];
  }
  ASSERT_EQ(bytes.size(), 8 + n + expected_data.size());
  EXPECT_TRUE(bytes.compare(8 + n, std::string::npos, expected_data) == 0) << p;
  weft::SafetensorsReader r(p.string());
  EXPECT_EQ(r.read("t" + std::to_string(sizes.size() - 1)), pattern(sizes.back(), static_cast<int>(sizes.size() - 1)));
}

}  // namespace

// Sizes around the 4 KiB block, the 1 MiB staging buffer and the 64 MiB the
// writer lets queue: one float, odd sizes that leave every tensor at another
// offset within a block, a tensor past the queue limit.
TEST(SafetensorsWriter, StreamsTheBytesOfEveryTensorInOrder) {
  const std::vector<size_t> sizes = {1, 1023, 1024, 1025, 262143, 262145, 3, (17u << 20) + 7, 5, 600000, 1};
  auto pool = std::make_shared<weft::AlignedBytesPool>();
  check_stream(temp_file("stream.safetensors"), sizes, false, pool);
  EXPECT_GT(pool->kept_bytes(), 0u);  // written buffers came back for the next save
  // A second save from the same pool, then a buffered one (nothing waits for the disk).
  check_stream(temp_file("stream2.safetensors"), sizes, false, pool);
  check_stream(temp_file("stream3.safetensors"), sizes, true, nullptr);
  // tmpfs may refuse O_DIRECT: the writer falls back to ordinary writes.
  if (fs::is_directory("/dev/shm")) {
    fs::path shm = fs::path("/dev/shm") / ("weft-st-" + std::to_string(::getpid()) + ".safetensors");
    check_stream(shm, {1, 1025, 262145, 7}, false, pool);
    fs::remove(shm);
  }
  for (const auto& e : fs::directory_iterator(temp_file("x").parent_path()))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

// A write the disk refuses (a file-size limit, as a full disk) surfaces as
// weft::Error naming the file, and the unfinished file is removed.
TEST(SafetensorsWriter, AFailedWriteIsReportedAndLeavesNoFile) {
  fs::path p = temp_file("limited.safetensors");
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 1 << 20;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string error;
  try {
    weft::SafetensorsWriter w(p.string(), {{"a", {1 << 20}}, {"b", {1 << 20}}});
    w.write("a", pattern(1 << 20, 0));
    w.write("b", pattern(1 << 20, 1));
    w.finish();
  } catch (const weft::Error& e) {
    error = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(error.find("write failed"), std::string::npos) << error;
  EXPECT_NE(error.find(p.string() + ".tmp."), std::string::npos) << error;
  // Buffered (a save committed on another thread): the tensors are still
  // taken, and finish() reports the failure.
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::signal(SIGXFSZ, SIG_IGN);
  std::string collect_error, finish_error;
  {
    weft::SafetensorsWriter w(p.string(), {{"a", {1 << 20}}, {"b", {1 << 20}}}, {}, /*buffered=*/true);
    try {
      w.write("a", pattern(1 << 20, 0));
      w.write("b", pattern(1 << 20, 1));
    } catch (const weft::Error& e) {
      collect_error = e.what();
    }
    try {
      w.finish();
    } catch (const weft::Error& e) {
      finish_error = e.what();
    }
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(collect_error, "");
  EXPECT_NE(finish_error.find("write failed"), std::string::npos) << finish_error;
  for (const auto& e : fs::directory_iterator(p.parent_path()))
    EXPECT_EQ(e.path().filename().string().find("limited"), std::string::npos) << e.path();
}
