// The resolved recipe: includes merged, `--set` overrides applied, every
// section validated against its schema (core sections here, plugin sections
// against the chosen plugin's schema) and defaults filled in.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/topology.hpp"

namespace weft {

struct RecipeSection {
  std::string name;    // "model", "parallel.data_parallel", "log.jsonl", ...
  std::string family;  // plugin family; empty for core sections (run, batch, ...)
  std::string plugin;  // chosen plugin; empty for core sections
  Options options;     // without the `plugin` key
};

struct Recipe {
  std::string path;                   // the top-level recipe file
  std::vector<RecipeSection> sections;  // canonical order
  ParallelSizes sizes;                // tp, pp, dp (resolved from "auto"), ep
  int world = 1;
  int64_t grad_accum = 1;             // global / (micro * dp)
  std::vector<std::string> notes;     // what loading changed on its own (keys a plugin switch dropped)

  bool has(const std::string& section) const;
  const RecipeSection& section(const std::string& name) const;  // asserts presence
  const Options& options(const std::string& name) const { return section(name).options; }
  const std::string& plugin(const std::string& name) const { return section(name).plugin; }
  std::string to_toml() const;  // every key, defaults included; reads back to the same recipe
};

// Loads more plugin folders named by the recipe's [plugins] paths before the
// plugin sections are validated.
using PluginDirLoader = std::function<void(const std::vector<std::string>& dirs)>;

struct RecipeEnv {
  int launcher_world = 0;  // world size given by mpirun/srun (0: not launched externally)
  std::vector<std::string> unsets;  // --unset section.key: removed before validation
};

// Throws weft::Error with "file:line:col: what" on any refusal.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides,
                   const Registry& registry, const PluginDirLoader& load_dirs = {},
                   const RecipeEnv& env = {});

// The schemas of the core sections (run, batch, parallel, checkpoint, log, plugins).
const OptionSchema& core_schema(const std::string& section);

// The plugin family of a plugin section ("model" -> "model", "data" -> "dataset");
// "" for core sections and unknown names.
std::string section_family(const std::string& section);

// The option `key` of `section` as load_recipe would accept it, with `plugin`
// chosen for a plugin section ("" = the section's default plugin); nullptr
// when the section, the plugin or the key is unknown to this build. Lets a
// tool write only keys the running weft takes.
const OptionSpec* recipe_option(const Registry& registry, const std::string& section, const std::string& plugin,
                                const std::string& key);

}  // namespace weft
