// Datasets "text" and "synthetic"; also the small output plugins of the same
// group (precision "fp32", metrics sinks "jsonl" and "console").
#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "byte_tokenizer.hpp"
#include "console_sink.hpp"
#include "fp32_precision.hpp"
#include "jsonl_sink.hpp"
#include "synthetic_dataset.hpp"
#include "text_dataset.hpp"
#include "weft/error.hpp"

namespace fs = std::filesystem;
using weft::OptValue;

namespace {

constexpr int32_t kEot = 256;

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "weft-test-data-XXXXXX").string();
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& name, const std::string& content) const {
    fs::path p = path_ / name;
    std::ofstream out(p, std::ios::binary);
    out << content;
    return p.string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

weft::Options text_options(std::vector<std::string> files, std::string documents = "file", int64_t max_bytes = 0) {
  return weft::Options("data", {{"files", {OptValue(std::move(files)), {}}},
                                {"documents", {OptValue(std::move(documents)), {}}},
                                {"max_bytes", {OptValue(max_bytes), {}}}});
}

std::vector<int32_t> bytes(const std::string& s) {
  std::vector<int32_t> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

std::vector<int32_t> sample_of(const weft::Dataset& d, int64_t i, int64_t t) {
  std::vector<int32_t> out(static_cast<size_t>(t + 1), -7);
  d.sample(i, out.data());
  return out;
}

std::vector<std::vector<int32_t>> epoch_of(const weft::Dataset& d, int64_t epoch, int64_t t) {
  std::vector<std::vector<int32_t>> out;
  for (int64_t k = 0; k < d.size(); ++k) out.push_back(sample_of(d, epoch * d.size() + k, t));
  return out;
}

// ---------------------------------------------------------------- text ----

TEST(TextData, ExactSamplesOfATinyCorpus) {
  TempDir dir;
  const std::string a = dir.write("a.txt", "abc");
  const std::string b = dir.write("b.txt", "defghij");
  weft::ByteTokenizer tok;
  weft::TextDataset d(text_options({a, b}), {&tok, 4, 1234});

  // Stream: a b c EOT d e f g h i j EOT  (12 tokens); samples start at 0, 4, 8.
  std::vector<int32_t> stream = {'a', 'b', 'c', kEot, 'd', 'e', 'f', 'g', 'h', 'i', 'j', kEot};
  EXPECT_EQ(d.tokens(), stream);
  EXPECT_EQ(d.documents(), 2);
  ASSERT_EQ(d.size(), 2);  // (12 - 1) / 4: the third window [8, 12] would need a 13th token
  const std::vector<std::vector<int32_t>> expected = {
      {'a', 'b', 'c', kEot, 'd'},
      {'d', 'e', 'f', 'g', 'h'},
  };
  // Every epoch visits each expected sample exactly once.
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    auto got = epoch_of(d, epoch, 4);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, expected) << "epoch " << epoch;
  }
  // And in the order of the seeded permutation.
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> perm = weft::seeded_permutation(2, 1234, epoch);
    for (int64_t k = 0; k < 2; ++k)
      EXPECT_EQ(sample_of(d, epoch * 2 + k, 4), expected[perm[k]]) << epoch << " " << k;
  }
}

TEST(TextData, SampleCountAtTheBoundary) {
  TempDir dir;
  weft::ByteTokenizer tok;
  // 8 bytes + EOT = 9 tokens = 2*T + 1: exactly two samples for T = 4.
  weft::TextDataset d(text_options({dir.write("x.txt", "01234567")}), {&tok, 4, 1});
  ASSERT_EQ(d.size(), 2);
  auto got = epoch_of(d, 0, 4);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got[0], bytes("01234"));
  EXPECT_EQ(got[1], (std::vector<int32_t>{'4', '5', '6', '7', kEot}));
}

TEST(TextData, MaxBytesTruncatesAcrossFiles) {
  TempDir dir;
  weft::ByteTokenizer tok;
  const std::string a = dir.write("a.txt", "abc");
  const std::string b = dir.write("b.txt", "defgh");
  const std::string c = dir.write("c.txt", "zzz");
  weft::TextDataset d(text_options({a, b, c}, "file", 5), {&tok, 2, 1});
  EXPECT_EQ(d.tokens(), (std::vector<int32_t>{'a', 'b', 'c', kEot, 'd', 'e', kEot}));
  EXPECT_EQ(d.documents(), 2);
}

TEST(TextData, PercentLineSplitting) {
  const std::string text = "first quote\nline two\n%\nsecond\n%\n%\n%x\nthird\r\n%\r\nlast";
  auto docs = weft::split_documents(text, weft::DocumentSplit::PercentLine);
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[0], "first quote\nline two\n");
  EXPECT_EQ(docs[1], "second\n");
  EXPECT_EQ(docs[2], "%x\nthird\r\n");  // "%x" is not a separator
  EXPECT_EQ(docs[3], "last");

  TempDir dir;
  weft::ByteTokenizer tok;
  weft::TextDataset d(text_options({dir.write("f", "ab\n%\ncd\n%\n")}, "percent-line"), {&tok, 2, 5});
  EXPECT_EQ(d.tokens(), (std::vector<int32_t>{'a', 'b', '\n', kEot, 'c', 'd', '\n', kEot}));
  EXPECT_EQ(d.documents(), 2);
}

TEST(TextData, BlankLineSplitting) {
  const std::string text = "\n\npara one\nstill one\n\n\n  \t\npara two\n\r\npara three";
  auto docs = weft::split_documents(text, weft::DocumentSplit::BlankLine);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], "para one\nstill one\n");
  EXPECT_EQ(docs[1], "para two\n");
  EXPECT_EQ(docs[2], "para three");

  auto whole = weft::split_documents(text, weft::DocumentSplit::File);
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(whole[0], text);
  EXPECT_TRUE(weft::split_documents("", weft::DocumentSplit::File).empty());
  EXPECT_TRUE(weft::split_documents("\n\n", weft::DocumentSplit::BlankLine).empty());

  TempDir dir;
  weft::ByteTokenizer tok;
  weft::TextDataset d(text_options({dir.write("f", "x\n\ny\n"), dir.write("g", "")}, "blank-line"), {&tok, 2, 5});
  EXPECT_EQ(d.tokens(), (std::vector<int32_t>{'x', '\n', kEot, 'y', '\n', kEot}));
}

// A corpus with many samples for the order tests: 400 distinct 8-byte documents.
std::string many_docs_file(const TempDir& dir) {
  std::string text;
  for (int i = 0; i < 400; ++i) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "doc%04d\n", i);
    text += buf;
    text += "\n";
  }
  return dir.write("many.txt", text);
}

TEST(TextData, OrderIsASeededPermutationPerEpoch) {
  TempDir dir;
  weft::ByteTokenizer tok;
  const std::string f = many_docs_file(dir);
  const int64_t t = 9;  // each document is 8 bytes + EOT = 9 tokens: sample k starts document k
  weft::TextDataset d(text_options({f}, "blank-line"), {&tok, t, 42});
  ASSERT_EQ(d.size(), 399);  // (3600 - 1) / 9

  // Sample k of the stream is document k ("docKKKK\n" EOT) followed by the first byte of document k+1.
  auto first = epoch_of(d, 0, t);
  std::set<int> seen;
  for (const auto& s : first) {
    ASSERT_EQ(s.size(), 10u);
    std::string head(s.begin(), s.begin() + 3);
    ASSERT_EQ(head, "doc");
    int k = std::stoi(std::string(s.begin() + 3, s.begin() + 7));
    EXPECT_EQ(s[8], kEot);
    EXPECT_EQ(s[9], 'd');
    seen.insert(k);
  }
  EXPECT_EQ(seen.size(), 399u);  // every sample once: a permutation
  EXPECT_EQ(*seen.begin(), 0);
  EXPECT_EQ(*seen.rbegin(), 398);

  // Shuffled, not the identity order.
  int in_place = 0;
  for (size_t k = 0; k < first.size(); ++k)
    if (std::stoi(std::string(first[k].begin() + 3, first[k].begin() + 7)) == static_cast<int>(k)) ++in_place;
  EXPECT_LT(in_place, 20);

  // Same seed: same order, from a separately built dataset.
  weft::TextDataset same(text_options({f}, "blank-line"), {&tok, t, 42});
  EXPECT_EQ(epoch_of(same, 0, t), first);
  EXPECT_EQ(epoch_of(same, 1, t), epoch_of(d, 1, t));

  // Another seed: another order.
  weft::TextDataset other(text_options({f}, "blank-line"), {&tok, t, 43});
  EXPECT_NE(epoch_of(other, 0, t), first);

  // The next epoch reshuffles: a different order of the same samples.
  auto second = epoch_of(d, 1, t);
  EXPECT_NE(second, first);
  auto a = first, b = second;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  EXPECT_EQ(a, b);

  // Random access does not depend on what was asked before.
  EXPECT_EQ(sample_of(d, 5 * 399 + 17, t), sample_of(same, 5 * 399 + 17, t));
}

TEST(TextData, PermutationIsUniform) {
  // All 24 orders of 4 items should appear about equally often over seeds.
  std::map<std::vector<int64_t>, int> counts;
  const int trials = 4800;
  for (int s = 0; s < trials; ++s) {
    auto p = weft::seeded_permutation(4, static_cast<uint64_t>(s), 0);
    std::vector<int64_t> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    ASSERT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3}));
    ++counts[p];
  }
  EXPECT_EQ(counts.size(), 24u);
  for (const auto& [perm, n] : counts) {
    EXPECT_GT(n, 130);  // expected 200, sd about 14
    EXPECT_LT(n, 270);
  }
  EXPECT_EQ(weft::seeded_permutation(1, 7, 3), std::vector<int64_t>{0});
}

TEST(TextData, MissingFileIsAnErrorNamingThePath) {
  TempDir dir;
  weft::ByteTokenizer tok;
  const std::string ok = dir.write("ok.txt", "plenty of text here");
  const std::string missing = (dir.path() / "no-such-file.txt").string();
  try {
    weft::TextDataset d(text_options({ok, missing}), {&tok, 4, 1});
    FAIL() << "expected weft::Error";
  } catch (const weft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  // A directory is not a text file either.
  try {
    weft::TextDataset d(text_options({dir.path().string()}), {&tok, 4, 1});
    FAIL() << "expected weft::Error";
  } catch (const weft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path().string()), std::string::npos) << e.what();
  }
}

// A binary file (an executable, token ids) is refused naming the file and the offset.
TEST(TextData, BinaryFilesAreRefused) {
  TempDir dir;
  weft::ByteTokenizer tok;
  auto message = [&](const std::string& path) -> std::string {
    try {
      weft::TextDataset d(text_options({path}), {&tok, 4, 1});
    } catch (const weft::Error& e) {
      return e.what();
    }
    return "accepted";
  };
  const std::string nul = dir.write("nul.bin", std::string("plain text\0more text", 20));
  EXPECT_NE(message(nul).find("'" + nul + "' is not text: NUL byte at offset 10;"), std::string::npos) << message(nul);
  std::string noise;
  for (int i = 0; i < 400; ++i) noise += static_cast<char>(0x80 + (i * 37) % 0x7f);
  const std::string latin = dir.write("noise.bin", "ok " + noise);
  EXPECT_NE(message(latin).find("'" + latin + "' is not text: "), std::string::npos) << message(latin);
  EXPECT_NE(message(latin).find("(the first at offset 3)"), std::string::npos) << message(latin);
  // Text with a few stray bytes (Latin-1 names in English text) still trains.
  const std::string mostly = dir.write("mostly.txt", "Caf\xe9 au lait, na\xefve, plenty of plain ASCII words here.");
  EXPECT_EQ(message(mostly), "accepted");
}

// What `weft check` reports: documents and tokens of an epoch.
TEST(TextData, StatsCountDocumentsAndTokens) {
  TempDir dir;
  weft::ByteTokenizer tok;
  const std::string f = dir.write("f.txt", "one\n%\ntwo two\n");
  weft::TextDataset d(text_options({f}, "percent-line"), {&tok, 4, 1});
  EXPECT_EQ(d.stats().documents, 2);
  EXPECT_EQ(d.stats().tokens, 4 + 8 + 2);
  weft::SyntheticDataset s(300, 10, 8, 1);
  EXPECT_EQ(s.stats().documents, -1);
  EXPECT_EQ(s.stats().tokens, 10 * 9);
}

TEST(TextData, TooSmallCorpusSaysHowManyTokens) {
  TempDir dir;
  weft::ByteTokenizer tok;
  const std::string f = dir.write("small.txt", "ab");
  try {
    weft::TextDataset d(text_options({f}), {&tok, 4, 1});  // 3 tokens, needs 5
    FAIL() << "expected weft::Error";
  } catch (const weft::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("3 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("5"), std::string::npos) << msg;
    EXPECT_NE(msg.find(f), std::string::npos) << msg;
  }
  // Empty files only: zero tokens.
  const std::string empty = dir.write("empty.txt", "");
  EXPECT_THROW(weft::TextDataset(text_options({empty}), {&tok, 4, 1}), weft::Error);
}

TEST(TextData, OptionErrorsNameTheRecipeLine) {
  weft::ByteTokenizer tok;
  weft::SourcePos pos{"recipe.toml", 7, 1};
  weft::Options opts("data", {{"files", {OptValue(std::vector<std::string>{"/nonexistent/weft/x.txt"}), pos}},
                              {"documents", {OptValue(std::string("file")), {}}},
                              {"max_bytes", {OptValue(int64_t{0}), {}}}});
  try {
    weft::TextDataset d(opts, {&tok, 4, 1});
    FAIL() << "expected weft::Error";
  } catch (const weft::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("recipe.toml:7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("/nonexistent/weft/x.txt"), std::string::npos) << msg;
  }
}

// ----------------------------------------------------------- synthetic ----

weft::Options synthetic_options(int64_t vocab, int64_t size) {
  return weft::Options("data", {{"vocab", {OptValue(vocab), {}}}, {"size", {OptValue(size), {}}}});
}

TEST(SyntheticData, DeterministicAndInRange) {
  weft::ByteTokenizer tok;
  const int64_t t = 63;
  weft::SyntheticDataset a(synthetic_options(7, 100), {&tok, t, 9});
  weft::SyntheticDataset b(synthetic_options(7, 100), {&tok, t, 9});
  weft::SyntheticDataset c(synthetic_options(7, 100), {&tok, t, 10});
  EXPECT_EQ(a.size(), 100);
  EXPECT_EQ(a.vocab(), 7);
  std::vector<int> histogram(7, 0);
  for (int64_t i = 0; i < 300; ++i) {
    auto s = sample_of(a, i, t);
    EXPECT_EQ(s, sample_of(b, i, t)) << i;  // same seed, same tokens
    EXPECT_EQ(s, sample_of(a, i, t)) << i;  // repeatable
    EXPECT_NE(s, sample_of(c, i, t)) << i;  // other seed, other tokens
    for (int32_t tokv : s) {
      ASSERT_GE(tokv, 0);
      ASSERT_LT(tokv, 7);
      ++histogram[tokv];
    }
  }
  EXPECT_NE(sample_of(a, 0, t), sample_of(a, 1, t));
  // Uniform: 300*64/7 = 2743 per value expected.
  for (int n : histogram) {
    EXPECT_GT(n, 2400);
    EXPECT_LT(n, 3100);
  }
}

TEST(SyntheticData, VocabFromTheTokenizer) {
  weft::ByteTokenizer tok;
  weft::SyntheticDataset d(synthetic_options(0, int64_t{1} << 20), {&tok, 16, 1});
  EXPECT_EQ(d.vocab(), 257);
  EXPECT_EQ(d.size(), int64_t{1} << 20);
  int32_t top = 0;
  for (int64_t i = 0; i < 200; ++i)
    for (int32_t v : sample_of(d, i, 16)) {
      ASSERT_GE(v, 0);
      ASSERT_LT(v, 257);
      top = std::max(top, v);
    }
  EXPECT_GT(top, 240);
  EXPECT_THROW(weft::SyntheticDataset(synthetic_options(1000, 10), {&tok, 16, 1}), weft::Error);
  EXPECT_THROW(weft::SyntheticDataset(synthetic_options(0, 10), {nullptr, 16, 1}), weft::Error);
}

// A model vocabulary larger than the tokenizer's (gpt's vocab_size) bounds the ids instead.
TEST(SyntheticData, VocabFromTheModel) {
  weft::ByteTokenizer tok;
  weft::SyntheticDataset d(synthetic_options(0, 1000), {&tok, 16, 1, 50304});
  EXPECT_EQ(d.vocab(), 50304);
  int32_t top = 0;
  for (int64_t i = 0; i < 200; ++i)
    for (int32_t v : sample_of(d, i, 16)) {
      ASSERT_GE(v, 0);
      ASSERT_LT(v, 50304);
      top = std::max(top, v);
    }
  EXPECT_GT(top, 40000);
  EXPECT_EQ(weft::SyntheticDataset(synthetic_options(1000, 10), {&tok, 16, 1, 50304}).vocab(), 1000);
  EXPECT_EQ(weft::SyntheticDataset(synthetic_options(0, 10), {nullptr, 16, 1, 300}).vocab(), 300);
  EXPECT_THROW(weft::SyntheticDataset(synthetic_options(50305, 10), {&tok, 16, 1, 50304}), weft::Error);
}

// ---------------------------------------------------- precision, metrics ----

TEST(Fp32Precision, PolicyIsPlainFp32) {
  weft::Fp32Precision p;
  EXPECT_EQ(p.compute_dtype(), weft::DType::F32);
  EXPECT_EQ(p.master_dtype(), weft::DType::F32);
  EXPECT_EQ(p.loss_scale(), 1.0f);
  EXPECT_FALSE(p.update_scale(false));
  EXPECT_FALSE(p.update_scale(true));
}

TEST(MetricsJsonl, NumbersReadBackExactly) {
  EXPECT_EQ(weft::json_number(12), "12");
  EXPECT_EQ(weft::json_number(-3), "-3");
  EXPECT_EQ(weft::json_number(1e15), "1000000000000000");
  EXPECT_EQ(weft::json_number(std::nan("")), "null");
  EXPECT_EQ(weft::json_number(std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(weft::json_number(-std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(weft::json_number(9007199254740992.0), "9007199254740992");  // 2^53: not below, so %.17g
  for (double v : {0.1, 4.123456789012345, 6e-4, 1.0 / 3.0, -2.5e-300, 123456.789}) {
    std::string s = weft::json_number(v);
    EXPECT_EQ(std::strtod(s.c_str(), nullptr), v) << s;
    EXPECT_NE(s.find_first_of(".e"), std::string::npos) << s;
  }
}

TEST(MetricsJsonl, AppendsOneObjectPerRecordOnRankZero) {
  TempDir dir;
  const fs::path out = dir.path() / "run";
  weft::MetricsRecord r1;
  r1.step = 1;
  r1.total_steps = 2;
  r1.values = {{"loss", 4.5}, {"lr", 0.1}, {"tokens_per_s", 1000.0}, {"grad_norm", std::nan("")}};
  weft::MetricsRecord r2;
  r2.step = 2;
  r2.values = {{"loss", 4.25}, {"odd \"name\"", 2}};
  {
    weft::JsonlSink sink({out.string(), 0, 2});
    EXPECT_EQ(sink.path(), (out / "metrics.jsonl").string());
    sink.write(r1);
    sink.flush();
  }
  {
    weft::JsonlSink sink({out.string(), 0, 2});  // a resumed run appends
    sink.write(r2);
    weft::JsonlSink other_rank({out.string(), 1, 2});
    other_rank.write(r2);
    other_rank.flush();
  }
  std::ifstream in(out / "metrics.jsonl");
  std::stringstream all;
  all << in.rdbuf();
  EXPECT_EQ(all.str(),
            "{\"step\": 1, \"loss\": 4.5, \"lr\": 0.10000000000000001, \"tokens_per_s\": 1000, \"grad_norm\": null}\n"
            "{\"step\": 2, \"loss\": 4.25, \"odd \\\"name\\\"\": 2}\n");
}

TEST(MetricsJsonl, UnopenableFileNamesThePath) {
  TempDir dir;
  const std::string blocker = dir.write("not-a-dir", "x");
  try {
    weft::JsonlSink sink({blocker, 0, 1});
    FAIL() << "expected weft::Error";
  } catch (const weft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(blocker + "/metrics.jsonl"), std::string::npos) << e.what();
  }
}

TEST(MetricsConsole, ProgressLine) {
  weft::ConsoleSink sink({"", 0, 1});
  weft::MetricsRecord r;
  r.step = 12;
  r.total_steps = 50;
  r.values = {{"loss", 4.12341}, {"lr", 6e-4}, {"grad_norm", 1.2341}, {"tokens_per_s", 12345.2}, {"step_ms", 1000.0}};
  EXPECT_EQ(sink.format(r), "step 12/50 | loss 4.1234 | lr 6.0e-04 | gnorm 1.234 | 12345 tok/s | 1000.0 ms | ETA 0:38");
  // The ETA uses the mean step time so far: (1000 + 3000) / 2 ms for 37 steps = 74 s.
  r.step = 13;
  r.values = {{"step_ms", 3000.0}};
  EXPECT_EQ(sink.format(r), "step 13/50 | 3000.0 ms | ETA 1:14");
  EXPECT_EQ(weft::format_duration(3725), "1:02:05");
  EXPECT_EQ(weft::format_duration(42), "0:42");
}

}  // namespace

namespace {

// The progress line shows the rank's peak memory over every category.
TEST(MetricsConsole, ShowsPeakMemory) {
  weft::ConsoleSink sink({"", 0, 1});
  weft::MetricsRecord r;
  r.step = 3;
  r.total_steps = 3;
  r.values = {{"loss", 2.0}, {"mem_param_bytes", 1 << 20}, {"mem_grad_bytes", 1 << 20},
              {"mem_optim_bytes", 2 << 20}, {"mem_act_bytes", 512 << 10}};
  EXPECT_EQ(sink.format(r), "step 3/3 | loss 2.0000 | mem 4.5 MiB");
}

}  // namespace
