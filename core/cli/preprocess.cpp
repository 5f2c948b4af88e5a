// `weft preprocess RECIPE --input FILE.jsonl --output-prefix PREFIX`: JSON
// lines to a Megatron indexed dataset (PREFIX.bin + PREFIX.idx), tokenized
// with the recipe's [tokenizer], laid out as Megatron's preprocess_data.py
// lays it out (one sequence per document, uint16 ids when the vocabulary has
// fewer than 65500 tokens, else int32), so either tool reads the other's files.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "runtime.hpp"
#include "weft/error.hpp"
#include "weft/file.hpp"

namespace weft::cli {

namespace {

constexpr size_t kBatchBytes = size_t(4) << 20;  // lines read, then tokenized in parallel, per batch

struct Line {
  int64_t number = 0;  // 1-based, for messages
  std::string text;
};

// The tokens of one JSON line's `key` (empty when the line is blank).
std::vector<int32_t> encode_line(const Line& line, const std::string& input, const std::string& key,
                                 const Tokenizer& tokenizer, bool append_eod) {
  std::vector<int32_t> ids;
  if (line.text.find_first_not_of(" \t\r") == std::string::npos) return ids;
  const std::string where = input + ":" + std::to_string(line.number);
  nlohmann::json doc = nlohmann::json::parse(line.text, nullptr, false);
  if (doc.is_discarded()) throw Error(where + ": not a JSON value");
  if (!doc.is_object()) throw Error(where + ": not a JSON object");
  auto it = doc.find(key);
  if (it == doc.end()) throw Error(where + ": no key \"" + key + "\" (choose one with --json-key)");
  if (!it->is_string()) throw Error(where + ": \"" + key + "\" is not a string");
  ids = tokenizer.encode(it->get<std::string>());
  if (!ids.empty() && append_eod) ids.push_back(tokenizer.eot());  // as Megatron: not after an empty document
  return ids;
}

// Tokenizes `lines` with `workers` threads, each a contiguous slice; the first error wins.
std::vector<std::vector<int32_t>> encode_batch(const std::vector<Line>& lines, int workers, const std::string& input,
                                               const std::string& key, const Tokenizer& tokenizer, bool append_eod) {
  std::vector<std::vector<int32_t>> out(lines.size());
  std::vector<std::string> errors(static_cast<size_t>(workers));
  std::vector<std::thread> threads;
  const size_t per = (lines.size() + static_cast<size_t>(workers) - 1) / static_cast<size_t>(workers);
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      const size_t begin = static_cast<size_t>(w) * per, end = std::min(lines.size(), begin + per);
      try {
        for (size_t k = begin; k < end; ++k) out[k] = encode_line(lines[k], input, key, tokenizer, append_eod);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(w)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(e);
  return out;
}

template <class T>
void put(std::ofstream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof v);
}

// The .idx of Megatron's MMIDIDX format, version 1 (docs/data.md).
void write_index(const std::string& path, uint8_t dtype, const std::vector<int32_t>& lengths,
                 const std::vector<int64_t>& doc_index) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot create");
  out.write("MMIDIDX\0\0", 9);
  put<uint64_t>(out, 1);
  put<uint8_t>(out, dtype);
  put<uint64_t>(out, lengths.size());
  put<uint64_t>(out, doc_index.size());
  out.write(reinterpret_cast<const char*>(lengths.data()), static_cast<std::streamsize>(lengths.size() * 4));
  const int64_t item = dtype == 8 ? 2 : 4;
  int64_t pointer = 0;
  for (int32_t len : lengths) {
    put<int64_t>(out, pointer);
    pointer += len * item;
  }
  out.write(reinterpret_cast<const char*>(doc_index.data()), static_cast<std::streamsize>(doc_index.size() * 8));
  if (!out.flush()) throw Error(path + ": write failed (disk full?)");
}

// Removes the half-written files when preprocessing stops early (renamed ones are gone already).
struct TempFiles {
  std::vector<std::string> paths;
  ~TempFiles() {
    std::error_code ec;
    for (const std::string& p : paths) std::filesystem::remove(p, ec);
  }
};

void progress(uint64_t done, uint64_t total, double seconds, bool final) {
  if (!final && !isatty(2)) return;
  const double mbs = seconds > 0 ? static_cast<double>(done) / 1e6 / seconds : 0;
  const double eta = mbs > 0 ? static_cast<double>(total - std::min(done, total)) / 1e6 / mbs : 0;
  const int width = 30, filled = total ? static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total)) : width;
  std::fprintf(stderr, "\r[%s%s] %.1f/%.1f MB %.2f MB/s ETA %.0f s%s", std::string(static_cast<size_t>(std::min(filled, width)), '#').c_str(),
               std::string(static_cast<size_t>(width - std::min(filled, width)), '.').c_str(), static_cast<double>(done) / 1e6,
               static_cast<double>(total) / 1e6, mbs, eta, final ? "\n" : "");
}

}  // namespace

int cmd_preprocess(const RecipeArgs& args, const PreprocessArgs& pre) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  auto tokenizer = make_tokenizer(recipe, plugins.registry);
  const int64_t vocab = tokenizer->vocab_size();
  const uint8_t dtype = vocab < 65500 ? 8 : 4;  // Megatron's DType.optimal_dtype: uint16, else int32
  const int workers = pre.workers > 0 ? pre.workers : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  InputFile probe(pre.input);  // refuses FIFOs, devices and folders with a clear line
  const uint64_t total = probe.size();
  std::ifstream in(pre.input, std::ios::binary);
  if (!in) throw Error(pre.input + ": cannot open");
  const std::string bin_path = pre.output_prefix + ".bin", idx_path = pre.output_prefix + ".idx";
  const std::string bin_tmp = bin_path + ".tmp", idx_tmp = idx_path + ".tmp";
  const std::filesystem::path folder = std::filesystem::path(pre.output_prefix).parent_path();
  std::error_code ec;
  if (!folder.empty()) std::filesystem::create_directories(folder, ec);  // a failure shows as "cannot create" below
  TempFiles temp{{bin_tmp, idx_tmp}};
  std::ofstream bin(bin_tmp, std::ios::binary | std::ios::trunc);
  if (!bin) throw Error(bin_tmp + ": cannot create");

  std::vector<int32_t> lengths;
  std::vector<int64_t> doc_index{0};
  int64_t tokens = 0, number = 0;
  uint64_t read = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::vector<Line> batch;
  size_t batch_bytes = 0;
  auto flush = [&] {
    for (const auto& ids : encode_batch(batch, workers, pre.input, pre.json_key, *tokenizer, pre.append_eod)) {
      if (!ids.empty()) {
        if (dtype == 8) {
          std::vector<uint16_t> narrow(ids.begin(), ids.end());
          bin.write(reinterpret_cast<const char*>(narrow.data()), static_cast<std::streamsize>(narrow.size() * 2));
        } else {
          bin.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
        }
        if (ids.size() > 0x7fffffff) throw Error(pre.input + ": a document of more than 2^31 tokens");
        lengths.push_back(static_cast<int32_t>(ids.size()));
        tokens += static_cast<int64_t>(ids.size());
      }
      doc_index.push_back(static_cast<int64_t>(lengths.size()));
    }
    batch.clear();
    batch_bytes = 0;
    progress(read, total, seconds(), false);
  };
  for (std::string text; std::getline(in, text);) {
    read += text.size() + 1;
    batch_bytes += text.size();
    if (text.find_first_not_of(" \t\r") != std::string::npos) batch.push_back({++number, std::move(text)});
    else ++number;
    if (batch_bytes >= kBatchBytes) flush();
  }
  flush();
  if (!bin.flush()) throw Error(bin_tmp + ": write failed (disk full?)");
  bin.close();
  write_index(idx_tmp, dtype, lengths, doc_index);
  std::filesystem::rename(bin_tmp, bin_path);
  std::filesystem::rename(idx_tmp, idx_path);
  progress(total, total, seconds(), true);
  std::printf("wrote %s and %s: %lld documents, %lld tokens (%s), %.2f MB/s\n", bin_path.c_str(), idx_path.c_str(),
              static_cast<long long>(doc_index.size() - 1), static_cast<long long>(tokens),
              dtype == 8 ? "uint16" : "int32", static_cast<double>(total) / 1e6 / std::max(seconds(), 1e-9));
  return 0;
}

}  // namespace weft::cli
