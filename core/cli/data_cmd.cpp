// `weft data RECIPE [--sample I]...`: what the recipe's data holds (documents,
// tokens, samples per epoch) and sample I of the training order as ids and
// decoded text, so a user can check what the model will see.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "runtime.hpp"
#include "weft/dataset.hpp"
#include "weft/error.hpp"

namespace weft::cli {

namespace {

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t k = 0; k < ids.size(); ++k) {
    if (k) s += ' ';
    s += std::to_string(ids[k]);
  }
  return s;
}

}  // namespace

int cmd_data(const RecipeArgs& args, const std::vector<long long>& samples, bool json) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  auto tokenizer = make_tokenizer(recipe, plugins.registry);
  const ModelSummary summary = estimate_model(recipe, plugins.registry).summary;
  DatasetEnv denv;
  denv.tokenizer = tokenizer.get();
  denv.seq_length = summary.seq_length;
  denv.vocab_size = summary.vocab;
  denv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  auto dataset = plugins.registry.factory<Dataset>(recipe.plugin("data"))(recipe.options("data"), denv);

  const DatasetStats stats = dataset->stats();
  if (json) {
    nlohmann::json head{{"plugin", recipe.plugin("data")}, {"documents", stats.documents}, {"tokens", stats.tokens},
                        {"samples", dataset->size()}, {"sample_tokens", denv.seq_length + 1}};
    std::printf("%s\n", head.dump().c_str());
  } else {
    std::printf("data %s: %lld documents, %lld tokens, %lld samples per epoch of seq_length + 1 = %lld tokens\n",
                recipe.plugin("data").c_str(), static_cast<long long>(stats.documents),
                static_cast<long long>(stats.tokens), static_cast<long long>(dataset->size()),
                static_cast<long long>(denv.seq_length + 1));
  }
  std::vector<int32_t> ids(static_cast<size_t>(denv.seq_length + 1));
  for (long long i : samples) {
    if (i < 0) throw Error("--sample " + std::to_string(i) + ": sample indices start at 0");
    dataset->sample(i, ids.data());
    // Ids past the tokenizer's vocabulary (a model with a larger V) have no text.
    std::vector<int32_t> known;
    for (int32_t id : ids)
      if (id < tokenizer->vocab_size()) known.push_back(id);
    const std::string text = tokenizer->decode(known);
    if (json) {
      nlohmann::json row{{"sample", i}, {"ids", ids},
                         {"text", text}};
      std::printf("%s\n", row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else {
      std::printf("sample %lld ids: %s\nsample %lld text: %s\n", i, join_ids(ids).c_str(), i,
                  nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  }
  return 0;
}

}  // namespace weft::cli
