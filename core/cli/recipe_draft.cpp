#include "recipe_draft.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "weft/error.hpp"
#include "weft/recipe.hpp"

namespace weft::cli {

namespace {

// The resolved recipe's section order (recipe.cpp), so an imported recipe reads like `weft check`'s.
const char* const kSectionOrder[] = {"run", "model", "tokenizer", "data", "batch", "optimizer", "lr_schedule",
                                     "precision", "backend", "comm", "parallel", "parallel.tensor_parallel",
                                     "parallel.pipeline_schedule", "parallel.data_parallel",
                                     "parallel.expert_parallel", "checkpoint", "log", "eval", "plugins"};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

void split_target(const std::string& target, std::string& section, std::string& key) {
  const size_t dot = target.rfind('.');
  section = target.substr(0, dot);
  key = target.substr(dot + 1);
}

// `raw` typed as the spec's type, range and choices checked; errors name `where`.
OptValue typed(const OptionSpec& spec, const DraftKey& k, const std::string& where) {
  const std::string& raw = k.raw;
  auto bad = [&](const std::string& what) -> OptValue { throw Error(where + ": " + what); };
  auto in_range = [&](double v) {
    if ((spec.min && v < *spec.min) || (spec.max && v > *spec.max))
      bad(raw + " is out of range for " + k.section + "." + k.key + " (" +
          (spec.min ? opt_value_str(*spec.min) : std::string("-inf")) + " .. " +
          (spec.max ? opt_value_str(*spec.max) : std::string("inf")) + ")");
  };
  switch (spec.type) {
    case OptType::Bool:
      if (raw == "true" || raw == "1") return true;
      if (raw == "false" || raw == "0") return false;
      return bad("'" + raw + "' is not a boolean (" + k.section + "." + k.key + ")");
    case OptType::Int: {
      if (raw == "auto" && spec.auto_value) return std::string("auto");
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(raw.c_str(), &end, 10);
      if (raw.empty() || *end != '\0' || errno == ERANGE)
        return bad("'" + raw + "' is not an integer (" + k.section + "." + k.key + ")");
      in_range(static_cast<double>(v));
      return static_cast<int64_t>(v);
    }
    case OptType::Float: {
      char* end = nullptr;
      const double v = std::strtod(raw.c_str(), &end);
      if (raw.empty() || *end != '\0' || !std::isfinite(v))
        return bad("'" + raw + "' is not a finite number (" + k.section + "." + k.key + ")");
      in_range(v);
      return v;
    }
    case OptType::String:
      if (!spec.choices.empty()) {
        bool ok = false;
        for (const std::string& c : spec.choices) ok = ok || c == raw;
        if (!ok) {
          std::string list;
          for (const std::string& c : spec.choices) list += (list.empty() ? "" : ", ") + c;
          return bad("'" + raw + "' is not one of " + list + " (" + k.section + "." + k.key + ")");
        }
      }
      return raw;
    case OptType::StringList:
      return k.is_list ? k.list : std::vector<std::string>{raw};
    case OptType::IntList: {
      std::vector<int64_t> out;
      for (const std::string& part : k.is_list ? k.list : split(raw, ',')) {
        char* end = nullptr;
        const long long v = std::strtoll(part.c_str(), &end, 10);
        if (part.empty() || *end != '\0') bad("'" + part + "' is not an integer (" + k.section + "." + k.key + ")");
        out.push_back(v);
      }
      return out;
    }
  }
  return raw;
}

}  // namespace

void RecipeDraft::add(const std::string& target, DraftKey key) {
  // Alternatives stay in `target` until resolve() knows the plugins.
  split_target(split(target, '|').front(), key.section, key.key);
  key.target = target;
  keys_.push_back(std::move(key));
}

void RecipeDraft::set(const std::string& target, const std::string& raw, const std::string& source, bool droppable) {
  DraftKey k;
  k.raw = raw;
  k.source = source;
  k.droppable = droppable;
  add(target, std::move(k));
}

void RecipeDraft::set_list(const std::string& target, const std::vector<std::string>& values,
                           const std::string& source, bool droppable) {
  DraftKey k;
  k.list = values;
  k.is_list = true;
  k.source = source;
  k.droppable = droppable;
  add(target, std::move(k));
}

void RecipeDraft::set_default(const std::string& target, const std::string& raw, const std::string& what) {
  DraftKey k;
  k.raw = raw;
  k.source = what;
  k.is_default = true;
  k.droppable = true;
  add(target, std::move(k));
}

void RecipeDraft::unmapped(const std::string& source, const std::string& reason, bool strict_refuses) {
  unmapped_.push_back({source, reason, strict_refuses});
}

const DraftKey* RecipeDraft::find(const std::string& section, const std::string& key) const {
  const DraftKey* found = nullptr;
  for (const DraftKey& k : keys_)
    if (k.section == section && k.key == key && (!found || found->is_default)) found = &k;
  return found;
}

std::optional<int64_t> RecipeDraft::get_int(const std::string& section, const std::string& key) const {
  const DraftKey* k = find(section, key);
  if (!k) return std::nullopt;
  char* end = nullptr;
  const long long v = std::strtoll(k->raw.c_str(), &end, 10);
  if (k->raw.empty() || *end != '\0') return std::nullopt;
  return v;
}

std::optional<double> RecipeDraft::get_float(const std::string& section, const std::string& key) const {
  const DraftKey* k = find(section, key);
  if (!k) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(k->raw.c_str(), &end);
  if (k->raw.empty() || *end != '\0') return std::nullopt;
  return v;
}

bool RecipeDraft::remove(const std::string& section, const std::string& key) {
  const size_t before = keys_.size();
  std::erase_if(keys_, [&](const DraftKey& k) { return k.section == section && k.key == key; });
  return keys_.size() != before;
}

void RecipeDraft::resolve() {
  // A source's default gives way to any flag that sets the same key.
  std::erase_if(keys_, [&](const DraftKey& k) {
    if (!k.is_default) return false;
    for (const DraftKey& other : keys_)
      if (!other.is_default && other.target == k.target) return true;
    return false;
  });
  auto not_here = [&](const DraftKey& k, const std::string& what) {
    unmapped(k.source, "not in this version: " + what, !k.is_default);
  };
  std::vector<DraftKey> kept;
  // Plugins first: every other key is checked against its section's plugin.
  for (int pass = 0; pass < 2; ++pass) {
    for (DraftKey& k : keys_) {
      if ((k.key == "plugin") != (pass == 0)) continue;
      if (k.key == "plugin") {
        const std::string family = section_family(k.section);
        if (!registry_.find(family, k.raw)) {
          not_here(k, "this weft has no " + family + " plugin named '" + k.raw + "' (" + k.section + ".plugin)");
          continue;
        }
        k.value = k.raw;
      } else {
        const OptionSpec* spec = nullptr;
        std::vector<std::string> tried;
        for (const std::string& target : split(k.target, '|')) {
          std::string section, key;
          split_target(target, section, key);
          tried.push_back(target);
          std::string plugin;
          for (const DraftKey& p : kept)
            if (p.section == section && p.key == "plugin") plugin = p.raw;
          if ((spec = recipe_option(registry_, section, plugin, key))) {
            k.section = section;
            k.key = key;
            break;
          }
        }
        if (!spec) {
          std::string names;
          for (const std::string& t : tried) names += (names.empty() ? "" : " or ") + t;
          not_here(k, "this weft has no recipe key " + names);
          continue;
        }
        k.value = typed(*spec, k, k.source);
      }
      // Two sources that set one key must agree.
      for (const DraftKey& other : kept)
        if (other.section == k.section && other.key == k.key && other.value != k.value)
          throw Error(other.source + " and " + k.source + " disagree on " + k.section + "." + k.key + " (" +
                      opt_value_str(other.value) + " vs " + opt_value_str(k.value) + ")");
      bool duplicate = false;
      for (const DraftKey& other : kept) duplicate = duplicate || (other.section == k.section && other.key == k.key);
      if (!duplicate) kept.push_back(k);
    }
  }
  keys_ = std::move(kept);
}

std::string RecipeDraft::render(const std::string& header) {
  std::string out;
  int line = 1;
  auto emit = [&](const std::string& s) {
    out += s + "\n";
    ++line;
  };
  for (const std::string& h : split(header, '\n')) emit(h.empty() ? "#" : "# " + h);
  for (const std::string& c : comments_) emit("# " + c);
  for (const char* section : kSectionOrder) {
    bool opened = false;
    for (int pass = 0; pass < 2; ++pass)
      for (DraftKey& k : keys_) {
        if (k.section != section || (k.key == "plugin") != (pass == 0)) continue;
        if (!opened) {
          emit("");
          emit(std::string("[") + section + "]");
          opened = true;
        }
        k.line = line;
        emit(k.key + " = " + opt_value_str(k.value) + "  # " + k.source);
      }
  }
  return out;
}

}  // namespace weft::cli
