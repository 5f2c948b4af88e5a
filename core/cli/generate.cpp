// `weft generate --checkpoint DIR --prompt TEXT`: temperature / top-k sampling,
// recomputing the last seq_length tokens each step (no KV cache).
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "commands.hpp"
#include "runtime.hpp"
#include "weft/rng.hpp"

namespace weft::cli {

int cmd_generate(const std::string& checkpoint, const std::string& prompt, int tokens, double temperature, int top_k,
                 long long seed) {
  Plugins plugins;
  load_default_plugins(plugins);
  ModelStack stack;
  Recipe recipe;
  build_stack_from_checkpoint(stack, checkpoint, plugins.registry, plugins.scan, recipe);
  Backend& backend = *stack.backend;
  const ModelSummary summary = stack.model->summary();
  // Only ids the tokenizer can decode are sampled (a model may have a larger V).
  const int64_t T = summary.seq_length, Vp = summary.padded_vocab;
  const int64_t V = std::min<int64_t>(summary.vocab, stack.tokenizer->vocab_size());

  std::vector<int32_t> context = stack.tokenizer->encode(prompt);
  if (context.empty()) context.push_back(stack.tokenizer->eot());
  std::vector<int32_t> generated;
  std::vector<Module*> layers = stack.model->layers();
  std::vector<float> logits(Vp);
  for (int i = 0; i < tokens; ++i) {
    int64_t n = std::min<int64_t>(T, context.size());
    std::vector<int32_t> window(context.end() - n, context.end());
    Context ctx(backend, 0);  // no targets: the head returns logits [1,n,Vp]
    Tensor x = backend.alloc({1, n}, DType::I32, MemCategory::Workspace);
    backend.copy_from_host(x, window.data());
    for (Module* layer : layers) x = layer->forward(ctx, x);
    backend.copy_to_host(logits.data(), x.view((n - 1) * Vp, {Vp}));

    std::vector<int32_t> order(V);
    for (int32_t v = 0; v < V; ++v) order[v] = v;
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    int32_t next = order[0];
    if (temperature > 0) {
      int64_t k = top_k > 0 ? std::min<int64_t>(top_k, V) : V;
      std::vector<double> p(k);
      double total = 0;
      for (int64_t j = 0; j < k; ++j) total += p[j] = std::exp((logits[order[j]] - logits[order[0]]) / temperature);
      double u = uniform01(static_cast<uint64_t>(seed), 0, static_cast<uint64_t>(i)) * total;
      for (int64_t j = 0; j < k; ++j) {
        next = order[j];
        if ((u -= p[j]) <= 0) break;
      }
    }
    context.push_back(next);
    generated.push_back(next);
  }
  std::string out = prompt + stack.tokenizer->decode(generated);
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace weft::cli
