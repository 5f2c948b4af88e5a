// Finds plugin files and loads them into a Registry (docs/plugins.md); part
// of the SDK, so a plugin's own tests load its .so as weft does. Every file
// that cannot be used is kept as a refusal with its path and cause; callers
// decide whether that is fatal (`weft plugins`: always; train/check: only
// when the recipe needs a plugin that is missing).
#pragma once

#include <string>
#include <vector>

#include "weft/plugin.hpp"

namespace weft {

struct PluginRefusal {
  std::string path;
  std::string cause;
  std::string str() const { return path + ": " + cause; }
};

struct LoadedPlugin {
  std::string path;
  std::string family, name, version, fingerprint;
};

struct PluginScan {
  std::vector<LoadedPlugin> loaded;
  std::vector<PluginRefusal> refused;
};

// The build tree next to the executable, the install prefix's plugin folder,
// then WEFT_PLUGIN_PATH (colon-separated) when set.
std::vector<std::string> default_plugin_dirs();

// The plugin folders of the build tree at `build_root`: every folder one level
// below its plugins/, parallel/, models/ and optim/ (sorted within each).
std::vector<std::string> build_tree_plugin_dirs(const std::string& build_root);

// Loads every *.so in `dirs` (one folder level below the build tree's family
// folders, directly inside the others). A file already loaded is skipped.
void load_plugin_dirs(Registry& registry, const std::vector<std::string>& dirs, PluginScan& scan);

// Loads one file; throws weft::Error "PATH: cause" when it cannot be used.
LoadedPlugin load_plugin_file(Registry& registry, const std::string& path);

}  // namespace weft
