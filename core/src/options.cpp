#include "weft/options.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "weft/error.hpp"

namespace weft {

std::string SourcePos::str() const {
  if (file.empty()) return "";
  if (line <= 0) return file;
  return file + ":" + std::to_string(line) + ":" + std::to_string(col);
}

const char* opt_type_name(OptType type) {
  switch (type) {
    case OptType::Bool: return "boolean";
    case OptType::Int: return "integer";
    case OptType::Float: return "float";
    case OptType::String: return "string";
    case OptType::StringList: return "array of strings";
    case OptType::IntList: return "array of integers";
  }
  return "?";
}

static OptionSpec make_spec(std::string key, OptType type, OptValue def, std::string doc) {
  OptionSpec s;
  s.key = std::move(key);
  s.type = type;
  s.default_value = std::move(def);
  s.doc = std::move(doc);
  return s;
}

OptionSpec opt_bool(std::string key, bool def, std::string doc) {
  return make_spec(std::move(key), OptType::Bool, def, std::move(doc));
}
OptionSpec opt_int(std::string key, int64_t def, std::string doc, std::optional<double> min,
                   std::optional<double> max) {
  OptionSpec s = make_spec(std::move(key), OptType::Int, def, std::move(doc));
  s.min = min;
  s.max = max;
  return s;
}
OptionSpec opt_float(std::string key, double def, std::string doc, std::optional<double> min,
                     std::optional<double> max) {
  OptionSpec s = make_spec(std::move(key), OptType::Float, def, std::move(doc));
  s.min = min;
  s.max = max;
  return s;
}
OptionSpec opt_string(std::string key, std::string def, std::string doc, std::vector<std::string> choices) {
  OptionSpec s = make_spec(std::move(key), OptType::String, std::move(def), std::move(doc));
  s.choices = std::move(choices);
  return s;
}
OptionSpec opt_strings(std::string key, std::vector<std::string> def, std::string doc) {
  return make_spec(std::move(key), OptType::StringList, std::move(def), std::move(doc));
}
OptionSpec opt_ints(std::string key, std::vector<int64_t> def, std::string doc) {
  return make_spec(std::move(key), OptType::IntList, std::move(def), std::move(doc));
}
OptionSpec opt_path(std::string key, std::string def, std::string doc) {
  OptionSpec s = opt_string(std::move(key), std::move(def), std::move(doc));
  s.is_path = true;
  return s;
}
OptionSpec opt_paths(std::string key, std::vector<std::string> def, std::string doc) {
  OptionSpec s = opt_strings(std::move(key), std::move(def), std::move(doc));
  s.is_path = true;
  return s;
}
OptionSpec required(OptionSpec spec) {
  spec.required = true;
  return spec;
}

OptionSpec weighted_table(OptionSpec spec) {
  spec.weighted_table = true;
  return spec;
}

static std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string opt_value_str(const OptValue& value) {
  if (auto b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  if (auto i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (auto d = std::get_if<double>(&value)) {
    if (std::isnan(*d)) return "nan";
    if (std::isinf(*d)) return *d > 0 ? "inf" : "-inf";
    // Shortest form that reads back to the same double.
    char buf[40];
    for (int precision = 15; precision <= 17; ++precision) {
      std::snprintf(buf, sizeof buf, "%.*g", precision, *d);
      if (std::strtod(buf, nullptr) == *d) break;
    }
    std::string s = buf;
    if (s.find_first_of(".eE") == std::string::npos) s += ".0";
    return s;
  }
  if (auto s = std::get_if<std::string>(&value)) return quote(*s);
  if (auto ints = std::get_if<std::vector<int64_t>>(&value)) {
    std::string out = "[";
    for (size_t i = 0; i < ints->size(); ++i) out += (i ? ", " : "") + std::to_string((*ints)[i]);
    return out + "]";
  }
  const auto& list = std::get<std::vector<std::string>>(value);
  std::string out = "[";
  for (size_t i = 0; i < list.size(); ++i) {
    if (i) out += ", ";
    out += quote(list[i]);
  }
  return out + "]";
}

Options::Options(std::string section, std::map<std::string, Entry> entries, SourcePos section_pos)
    : section_(std::move(section)), section_pos_(std::move(section_pos)), entries_(std::move(entries)) {}

const Options::Entry& Options::entry(const std::string& key) const {
  auto it = entries_.find(key);
  WEFT_ASSERT(it != entries_.end(), "option " + section_ + "." + key + " is not in the schema");
  return it->second;
}

bool Options::get_bool(const std::string& key) const { return std::get<bool>(entry(key).value); }
int64_t Options::get_int(const std::string& key) const { return std::get<int64_t>(entry(key).value); }
double Options::get_float(const std::string& key) const {
  const OptValue& v = entry(key).value;
  if (auto i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  return std::get<double>(v);
}
const std::string& Options::get_string(const std::string& key) const {
  return std::get<std::string>(entry(key).value);
}
const std::vector<std::string>& Options::get_strings(const std::string& key) const {
  return std::get<std::vector<std::string>>(entry(key).value);
}
const std::vector<int64_t>& Options::get_ints(const std::string& key) const {
  return std::get<std::vector<int64_t>>(entry(key).value);
}
const SourcePos& Options::where(const std::string& key) const { return entry(key).pos; }

void Options::fail(const std::string& key, const std::string& message) const {
  const SourcePos& pos = has(key) ? where(key) : section_pos_;
  std::string place = pos.known() ? pos.str() + ": " : "";
  std::string name = section_.empty() ? key : section_ + "." + key;
  throw Error(place + name + ": " + message);
}

Options options_with_defaults(const OptionSchema& schema, const std::string& section,
                              const std::map<std::string, OptValue>& values) {
  std::map<std::string, Options::Entry> entries;
  for (const OptionSpec& spec : schema) entries[spec.key] = Options::Entry{spec.default_value, {}};
  for (const auto& [key, value] : values) {
    WEFT_ASSERT(entries.count(key), "option " + section + "." + key + " is not in the schema");
    entries[key] = Options::Entry{value, {}};
  }
  return Options(section, std::move(entries));
}

}  // namespace weft
