// `weft eval --checkpoint DIR --text FILE`: one JSON line with the mean loss
// over the file's consecutive seq_length windows.
#include <cmath>
#include <cstdio>

#include "commands.hpp"
#include "runtime.hpp"
#include "weft/file.hpp"

namespace weft::cli {

namespace {
constexpr uint64_t kMaxTextBytes = uint64_t(1) << 30;  // 4 bytes of token ids per byte of text
}  // namespace

int cmd_eval(const std::string& checkpoint, const std::string& text_file) {
  Plugins plugins;
  load_default_plugins(plugins);
  ModelStack stack;
  Recipe recipe;
  build_stack_from_checkpoint(stack, checkpoint, plugins.registry, plugins.scan, recipe);

  std::string text = read_input_file(text_file, kMaxTextBytes);
  std::vector<int32_t> tokens = stack.tokenizer->encode(text);
  const int64_t T = stack.model->summary().seq_length;
  const int64_t windows = tokens.empty() ? 0 : (static_cast<int64_t>(tokens.size()) - 1) / T;
  if (windows == 0)
    throw Error(text_file + ": " + std::to_string(tokens.size()) + " tokens; one window needs " +
                std::to_string(T + 1));

  // Window w: inputs tokens[w*T, w*T+T), targets shifted by one.
  const int64_t batch = std::max<int64_t>(1, recipe.options("batch").get_int("micro"));
  Backend& backend = *stack.backend;
  std::vector<Module*> layers = stack.model->layers();
  double loss_sum = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    int64_t B = std::min(batch, windows - w0);
    std::vector<int32_t> ids(B * T), targets(B * T);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        ids[b * T + t] = tokens[(w0 + b) * T + t];
        targets[b * T + t] = tokens[(w0 + b) * T + t + 1];
      }
    Context ctx(backend, 0);
    Tensor x = backend.alloc({B, T}, DType::I32, MemCategory::Workspace);
    ctx.targets = backend.alloc({B, T}, DType::I32, MemCategory::Workspace);
    backend.copy_from_host(x, ids.data());
    backend.copy_from_host(ctx.targets, targets.data());
    for (Module* layer : layers) x = layer->forward(ctx, x);
    loss_sum += backend.sum(x.data<float>(), x.numel());
  }
  double loss = loss_sum / static_cast<double>(windows * T);
  // JSON has no nan or inf: a diverged model's loss is null, as in metrics.jsonl.
  char loss_text[32] = "null";
  if (std::isfinite(loss)) std::snprintf(loss_text, sizeof loss_text, "%.17g", loss);
  std::printf("{\"loss\": %s, \"tokens\": %lld, \"windows\": %lld, \"seq_length\": %lld}\n", loss_text,
              static_cast<long long>(windows * T), static_cast<long long>(windows), static_cast<long long>(T));
  return 0;
}

}  // namespace weft::cli
