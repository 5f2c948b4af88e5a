// Test helper: encodes every text of a JSON array with a tokenizer plugin's
// implementation and prints one JSON object: the ids of each text, whether
// decode(encode(text)), or the encoding speed.
//   tokenize_tool gpt2 ENCODER_JSON VOCAB_BPE TEXTS_JSON
//   tokenize_tool hf TOKENIZER_JSON TEXTS_JSON
//   tokenize_tool speed-gpt2 ENCODER_JSON VOCAB_BPE TEXT_FILE   (MB/s of one file, one thread, CPU time)
//   tokenize_tool speed-hf TOKENIZER_JSON TEXT_FILE
//   tokenize_tool raw-gpt2 ... FILE, raw-hf ... FILE: decode(encode(bytes)) == bytes for a file of any bytes
#include <ctime>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "gpt2_tokenizer.hpp"
#if WEFT_HAVE_HF
#include "hf_tokenizer.hpp"
#endif
#include "weft/error.hpp"

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::unique_ptr<weft::Tokenizer> make(int argc, char** argv, int& next) {
  const std::string kind = argv[1];
  if ((kind == "gpt2" || kind == "speed-gpt2" || kind == "raw-gpt2") && argc == 5) {
    next = 4;
    return std::make_unique<weft::Gpt2Tokenizer>(argv[2], argv[3]);
  }
#if WEFT_HAVE_HF
  if ((kind == "hf" || kind == "speed-hf" || kind == "raw-hf") && argc == 4) {
    next = 3;
    return std::make_unique<weft::HfTokenizer>(argv[2]);
  }
#endif
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 1;
  try {
    int next = 0;
    auto tok = make(argc, argv, next);
    if (!tok) {
      std::fprintf(stderr, "usage: tokenize_tool gpt2|hf|speed-*|raw-* FILES... INPUT\n");
      return 1;
    }
    const std::string input = slurp(argv[next]);
    if (std::string(argv[1]).rfind("speed", 0) == 0) {
      // CPU time of this (single-threaded) process: MB/s per core, whatever else the machine runs.
      const std::clock_t c0 = std::clock();
      const auto ids = tok->encode(input);
      const double s = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
      std::printf("{\"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"mb_per_s\": %.2f}\n", input.size(),
                  ids.size(), s, static_cast<double>(input.size()) / 1e6 / s);
      return 0;
    }
    if (std::string(argv[1]).rfind("raw", 0) == 0) {  // any bytes, UTF-8 or not: does decode give them back?
      const auto ids = tok->encode(input);
      std::printf("{\"tokens\": %zu, \"same\": %s}\n", ids.size(), tok->decode(ids) == input ? "true" : "false");
      return 0;
    }
    const auto texts = nlohmann::json::parse(input);
    nlohmann::json out = nlohmann::json::object();
    out["ids"] = nlohmann::json::array();
    out["decoded"] = nlohmann::json::array();
    for (const auto& t : texts) {
      const auto ids = tok->encode(t.get<std::string>());
      out["ids"].push_back(ids);
      out["decoded"].push_back(tok->decode(ids));
    }
    out["vocab_size"] = tok->vocab_size();
    out["eot"] = tok->eot();
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  } catch (const weft::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
