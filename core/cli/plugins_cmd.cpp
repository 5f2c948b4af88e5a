// `weft plugins [NAME]`: what was found, what was refused and why, and one
// plugin's options.
#include <algorithm>
#include <cstdio>

#include "commands.hpp"
#include "text_util.hpp"

namespace weft::cli {

void load_default_plugins(Plugins& plugins) {
  load_plugin_dirs(plugins.registry, default_plugin_dirs(), plugins.scan);
}

namespace {

std::string spec_detail(const OptionSpec& spec) {
  std::string s = opt_type_name(spec.type);
  if (spec.required) {
    s += ", required";
  } else {
    s += ", default " + opt_value_str(spec.default_value);
  }
  if (!spec.choices.empty()) s += ", one of " + join(spec.choices, "|");
  if (spec.min || spec.max) {
    auto num = [&](double v) {
      return spec.type == OptType::Int ? std::to_string(static_cast<long long>(v)) : opt_value_str(v);
    };
    s += ", range " + (spec.min ? num(*spec.min) : std::string("-inf")) + ".." +
         (spec.max ? num(*spec.max) : std::string("inf"));
  }
  return s;
}

void print_family(const Registry& reg, const std::string& family) {
  auto records = reg.list(family);
  std::printf("%s:\n", family.c_str());
  if (records.empty()) std::printf("  (none)\n");
  for (const FactoryRecord* r : records)
    std::printf("  %-14s %-8s %s\n  %-14s from %s\n", r->name.c_str(), r->plugin_version.c_str(), r->doc.c_str(), "",
                r->plugin_file.c_str());
}

bool is_family(const std::string& name) {
  const auto& families = plugin_families();
  return std::find(families.begin(), families.end(), name) != families.end();
}

// One plugin's options; `name` is a plugin name or family/name.
void print_plugin(const Registry& reg, const std::string& name) {
  std::string family, plugin = name;
  size_t slash = name.find('/');
  if (slash != std::string::npos) {
    family = name.substr(0, slash);
    plugin = name.substr(slash + 1);
  }
  std::vector<const FactoryRecord*> matches;
  std::vector<std::string> all = plugin_families();
  for (const FactoryRecord* r : reg.list()) {
    all.push_back(r->name);
    if (r->name == plugin && (family.empty() || r->family == family)) matches.push_back(r);
  }
  if (matches.empty()) {
    std::string hint = did_you_mean(plugin, all);
    throw Error("no plugin or family named '" + name + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                "; `weft plugins` lists them");
  }
  for (const FactoryRecord* r : matches) {
    std::printf("%s/%s %s — %s\n  file: %s\n", r->family.c_str(), r->name.c_str(), r->plugin_version.c_str(),
                r->doc.c_str(), r->plugin_file.c_str());
    if (r->schema.empty()) std::printf("  options: none\n");
    for (const OptionSpec& spec : r->schema)
      std::printf("  %-20s %s\n  %-20s   %s\n", spec.key.c_str(), spec_detail(spec).c_str(), "", spec.doc.c_str());
  }
}

}  // namespace

int cmd_plugins(const std::string& name) {
  Plugins plugins;
  load_default_plugins(plugins);
  const Registry& reg = plugins.registry;

  // A plugin of that name wins over a family of that name.
  bool plugin_named = false;
  for (const FactoryRecord* r : reg.list()) plugin_named |= r->name == name;
  if (!name.empty() && is_family(name) && !plugin_named) {
    print_family(reg, name);
    return 0;
  }
  if (!name.empty()) {
    print_plugin(reg, name);
    return 0;
  }

  for (const std::string& family : plugin_families()) print_family(reg, family);
  if (!plugins.scan.refused.empty()) {
    std::fflush(stdout);
    for (const PluginRefusal& refusal : plugins.scan.refused)
      std::fprintf(stderr, "weft: error: plugin %s\n", refusal.str().c_str());
    return 2;
  }
  return 0;
}

}  // namespace weft::cli
