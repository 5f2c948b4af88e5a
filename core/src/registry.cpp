#include <algorithm>

#include "weft/plugin.hpp"
#include "text_util.hpp"

namespace weft {

const std::vector<std::string>& plugin_families() {
  static const std::vector<std::string> families = {
      "backend",         "communicator",      "tokenizer",       "dataset",       "precision",
      "model",           "tensor_parallel",   "pipeline_schedule", "data_parallel", "expert_parallel",
      "optimizer",       "lr_schedule",       "metrics_sink"};
  return families;
}

std::string Registry::describe(const FactoryRecord& record) {
  return "plugin " + record.family + "/" + record.name + " (" +
         (record.plugin_file.empty() ? std::string("built into the core") : record.plugin_file) + ")";
}

void Registry::add_record(FactoryRecord record) {
  const auto& fams = plugin_families();
  if (std::find(fams.begin(), fams.end(), record.family) == fams.end())
    throw Error("unknown plugin family '" + record.family + "' for '" + record.name + "'");
  if (!record.factory) throw Error(record.family + "/" + record.name + " is registered without a factory");
  if (const FactoryRecord* old = find(record.family, record.name)) {
    std::string where = old->plugin_file.empty() ? "the core" : old->plugin_file;
    throw Error("duplicate plugin name " + record.family + "/" + record.name + " (already provided by " +
                where + ")");
  }
  records_.push_back(std::move(record));
}

const FactoryRecord* Registry::find(const std::string& family, const std::string& name) const {
  for (const auto& r : records_)
    if (r.family == family && r.name == name) return &r;
  return nullptr;
}

const FactoryRecord& Registry::get(const std::string& family, const std::string& name) const {
  if (const FactoryRecord* r = find(family, name)) return *r;
  std::vector<std::string> names;
  for (const auto& r : records_)
    if (r.family == family) names.push_back(r.name);
  std::string msg = "no " + family + " plugin named '" + name + "'";
  std::string hint = did_you_mean(name, names);
  if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
  msg += names.empty() ? "; none is installed" : "; available: " + join(names, ", ");
  throw Error(msg);
}

std::vector<const FactoryRecord*> Registry::list(const std::string& family) const {
  std::vector<const FactoryRecord*> out;
  for (const auto& r : records_)
    if (family.empty() || r.family == family) out.push_back(&r);
  return out;
}

}  // namespace weft
