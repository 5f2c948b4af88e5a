// Recipe loading: TOML++ parse, include composition, `--set` overrides,
// validation against core and plugin schemas, cross-section checks.
#include "weft/recipe.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "text_util.hpp"
#include "weft/file.hpp"

namespace fs = std::filesystem;

namespace weft {

namespace {

constexpr size_t kMaxRecipeBytes = 16u << 20;
constexpr int kMaxIncludeDepth = 32;
constexpr int kMaxTableDepth = 16;

// Every section a recipe may have, in the order the resolved recipe prints them.
struct SectionDef {
  const char* name;
  const char* family;          // "" for core sections
  const char* default_plugin;  // "" = `plugin` must be given
  bool needed;                 // a run always builds it
};
const SectionDef kSections[] = {
    {"run", "", "", true},
    {"model", "model", "gpt", true},
    {"tokenizer", "tokenizer", "byte", true},
    {"data", "dataset", "", true},
    {"batch", "", "", true},
    {"optimizer", "optimizer", "adamw", true},
    {"lr_schedule", "lr_schedule", "constant", true},
    {"precision", "precision", "fp32", true},
    {"backend", "backend", "cpu", true},
    {"comm", "communicator", "auto", true},
    {"parallel", "", "", true},
    {"parallel.tensor_parallel", "tensor_parallel", "megatron", true},
    {"parallel.pipeline_schedule", "pipeline_schedule", "1f1b", true},
    {"parallel.data_parallel", "data_parallel", "ddp", true},
    {"parallel.expert_parallel", "expert_parallel", "alltoall", false},
    {"checkpoint", "", "", true},
    {"log", "", "", true},
    {"eval", "", "", true},
    {"plugins", "", "", true},
};

const SectionDef* find_section(const std::string& name) {
  for (const auto& s : kSections)
    if (name == s.name) return &s;
  return nullptr;
}

std::vector<std::string> top_level_names() {
  std::vector<std::string> names = {"include"};
  for (const auto& s : kSections)
    if (std::string(s.name).find('.') == std::string::npos) names.push_back(s.name);
  return names;
}

SourcePos pos_of(const toml::node& node) {
  const toml::source_region& src = node.source();
  SourcePos pos;
  pos.file = src.path ? *src.path : "";
  pos.line = static_cast<int>(src.begin.line);
  pos.col = static_cast<int>(src.begin.column);
  return pos;
}

[[noreturn]] void fail_at(const SourcePos& pos, const std::string& message) {
  throw Error((pos.known() ? pos.str() + ": " : "") + message);
}


// ---- parsing and includes ----------------------------------------------------------

std::string read_recipe_file(const std::string& path, const SourcePos& from) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail_at(from, "recipe file '" + path + "' not found");
  if (fs::is_directory(path, ec)) fail_at(from, "recipe '" + path + "' is a directory");
  std::unique_ptr<InputFile> file;
  try {
    file = std::make_unique<InputFile>(path);  // refuses FIFOs and devices without blocking
  } catch (const Error& e) {
    fail_at(from, std::string("recipe file ") + e.what());
  }
  if (file->size() > kMaxRecipeBytes) fail_at(from, "recipe file '" + path + "' is larger than 16 MiB");
  try {
    return file->read_all(kMaxRecipeBytes);  // the limit holds while reading too (/proc files report size 0)
  } catch (const Error& e) {
    fail_at(from, std::string("recipe file ") + e.what());
  }
}

void check_depth(const toml::node& node, int depth) {
  if (depth > kMaxTableDepth) fail_at(pos_of(node), "tables or arrays nested more than 16 deep");
  if (auto t = node.as_table())
    for (auto&& [k, v] : *t) check_depth(v, depth + 1);
  if (auto a = node.as_array())
    for (auto&& v : *a) check_depth(v, depth + 1);
}

// Later wins; tables merge key by key, anything else is replaced. Nodes are
// moved, never copied: TOML++ keeps source positions only across moves.
void merge_into(toml::table& dst, toml::table& src) {
  for (auto&& [key, value] : src) {
    toml::node* existing = dst.get(key);
    if (existing && existing->is_table() && value.is_table()) {
      merge_into(*existing->as_table(), *value.as_table());
    } else if (existing) {
      dst.erase(key);
      dst.insert(key, std::move(value));
    } else {
      dst.insert(key, std::move(value));
    }
  }
}

toml::table load_with_includes(const std::string& path, const SourcePos& from, std::vector<std::string>& stack) {
  std::string canonical = fs::weakly_canonical(fs::absolute(path)).string();
  for (size_t i = 0; i < stack.size(); ++i) {
    if (stack[i] == canonical) {
      std::string chain;
      for (size_t j = i; j < stack.size(); ++j) chain += fs::path(stack[j]).filename().string() + " -> ";
      fail_at(from, "include cycle: " + chain + fs::path(canonical).filename().string());
    }
  }
  if (static_cast<int>(stack.size()) >= kMaxIncludeDepth) fail_at(from, "includes nested more than 32 deep");

  std::string text = read_recipe_file(path, from);
  toml::table table;
  try {
    table = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    SourcePos pos{path, static_cast<int>(e.source().begin.line), static_cast<int>(e.source().begin.column)};
    std::string desc(e.description());
    fail_at(pos, "syntax error: " + desc);
  }
  check_depth(table, 0);

  stack.push_back(canonical);
  toml::table merged;
  if (toml::node* inc = table.get("include")) {
    std::vector<const toml::node*> items;
    if (inc->is_string()) {
      items.push_back(inc);
    } else if (auto arr = inc->as_array()) {
      for (auto&& item : *arr) items.push_back(&item);
    } else {
      fail_at(pos_of(*inc), "include: expected a string or an array of strings");
    }
    for (const toml::node* item : items) {
      if (!item->is_string()) fail_at(pos_of(*item), "include: expected a string (a recipe path)");
      fs::path rel = item->as_string()->get();
      fs::path full = (rel.is_absolute() ? rel : fs::path(path).parent_path() / rel).lexically_normal();
      SourcePos at = pos_of(*item);
      std::error_code ec;
      if (!fs::exists(full, ec))
        fail_at(at, "include '" + rel.string() + "' not found (looked for " + full.string() + ")");
      toml::table included = load_with_includes(full.string(), at, stack);
      merge_into(merged, included);
    }
    table.erase("include");
  }
  stack.pop_back();
  merge_into(merged, table);
  return merged;
}

// ---- typed values ----------------------------------------------------------------------

std::string describe_node_type(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    default: return "date/time";
  }
}

std::string with_article(const std::string& noun) {
  return (std::string("aeiou").find(noun[0]) != std::string::npos ? "an " : "a ") + noun;
}

std::string spec_expectation(const OptionSpec& spec) {
  std::string s = opt_type_name(spec.type);
  if (spec.auto_value) s += " or \"auto\"";
  if (spec.weighted_table) s += " or a table of weights";
  return s;
}

std::string resolve_path(const std::string& value, const SourcePos& pos) {
  if (value.empty()) return value;
  fs::path p = value;
  if (p.is_absolute()) return value;
  // Paths in a recipe file are relative to that file; paths from --set to the working directory.
  fs::path base = (pos.known() && pos.line > 0) ? fs::path(pos.file).parent_path() : fs::path();
  return fs::absolute(base / p).lexically_normal().string();
}

// `is_auto`: the value came from the word "auto", so the range does not apply.
void check_value(const OptionSpec& spec, const OptValue& value, const std::string& qualified, const SourcePos& pos,
                 bool is_auto = false) {
  auto out_of_range = [&](const std::string& shown) {
    std::string range;
    if (spec.min && spec.max)
      range = "allowed " + opt_value_str(spec.type == OptType::Int ? OptValue(int64_t(*spec.min)) : OptValue(*spec.min)) +
              " to " + opt_value_str(spec.type == OptType::Int ? OptValue(int64_t(*spec.max)) : OptValue(*spec.max));
    else if (spec.min)
      range = "minimum " + opt_value_str(spec.type == OptType::Int ? OptValue(int64_t(*spec.min)) : OptValue(*spec.min));
    else
      range = "maximum " + opt_value_str(spec.type == OptType::Int ? OptValue(int64_t(*spec.max)) : OptValue(*spec.max));
    fail_at(pos, qualified + ": " + shown + " is out of range (" + range + ")");
  };
  if (auto i = std::get_if<int64_t>(&value)) {
    if (is_auto) return;
    if ((spec.min && double(*i) < *spec.min) || (spec.max && double(*i) > *spec.max)) out_of_range(std::to_string(*i));
  } else if (auto d = std::get_if<double>(&value)) {
    if (!std::isfinite(*d)) fail_at(pos, qualified + ": " + opt_value_str(*d) + " is not a finite number");
    if ((spec.min && *d < *spec.min) || (spec.max && *d > *spec.max)) out_of_range(opt_value_str(*d));
  } else if (auto s = std::get_if<std::string>(&value)) {
    if (!spec.choices.empty() && std::find(spec.choices.begin(), spec.choices.end(), *s) == spec.choices.end()) {
      std::string msg = qualified + ": '" + *s + "' is not one of " + join(spec.choices, ", ");
      std::string hint = did_you_mean(*s, spec.choices);
      if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
      fail_at(pos, msg);
    }
  }
}

bool node_is_auto(const toml::node& node, const OptionSpec& spec) {
  return spec.auto_value && node.is_string() && node.as_string()->get() == "auto";
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c < 0xE0) ? 2 : (c >= 0xE0 && c < 0xF0) ? 3 : (c >= 0xF0 && c < 0xF5) ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

// A table {item = weight} as the list [weight, item, ...]. TOML++ keeps a
// table's keys sorted; their source positions give back the file's order.
std::vector<std::string> weighted_list(const toml::table& table, const OptionSpec& spec, const std::string& qualified) {
  std::vector<std::pair<const toml::key*, const toml::node*>> items;
  for (auto&& [k, v] : table) items.emplace_back(&k, &v);
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    const auto &x = a.first->source().begin, &y = b.first->source().begin;
    return x.line != y.line ? x.line < y.line : x.column < y.column;
  });
  std::vector<std::string> out;
  for (const auto& [k, v] : items) {
    const std::string key(k->str());
    const std::string where = qualified + "[\"" + key + "\"]";
    if (auto i = v->as_integer()) {
      if (i->get() < 0)
        fail_at(pos_of(*v), where + ": the weight must be a number >= 0, found " + std::to_string(i->get()));
      out.push_back(std::to_string(i->get()));
    } else if (auto f = v->as_floating_point()) {
      const double w = f->get();
      if (!std::isfinite(w) || w < 0)
        fail_at(pos_of(*v), where + ": the weight must be a number >= 0, found " + opt_value_str(OptValue(w)));
      char buf[64];
      const auto end = std::to_chars(buf, buf + sizeof buf, w).ptr;  // the shortest text that reads back the same
      out.emplace_back(buf, end);
    } else {
      fail_at(pos_of(*v), where + ": the weight must be a number >= 0, found " + with_article(describe_node_type(*v)));
    }
    out.push_back(spec.is_path ? resolve_path(key, pos_of(*v)) : key);
  }
  return out;
}

OptValue value_from_node(const toml::node& node, const OptionSpec& spec, const std::string& qualified) {
  SourcePos pos = pos_of(node);
  auto wrong = [&]() -> OptValue {
    fail_at(pos, qualified + ": expected " + spec_expectation(spec) + ", got " + describe_node_type(node));
  };
  switch (spec.type) {
    case OptType::Bool:
      if (auto b = node.as_boolean()) return b->get();
      return wrong();
    case OptType::Int:
      if (auto i = node.as_integer()) return i->get();
      if (spec.auto_value && node.is_string() && node.as_string()->get() == "auto") return *spec.auto_value;
      return wrong();
    case OptType::Float:
      if (auto f = node.as_floating_point()) return f->get();
      if (auto i = node.as_integer()) return static_cast<double>(i->get());
      return wrong();
    case OptType::String:
      if (auto s = node.as_string()) return spec.is_path ? resolve_path(s->get(), pos) : s->get();
      return wrong();
    case OptType::StringList: {
      if (spec.weighted_table && node.is_table()) return weighted_list(*node.as_table(), spec, qualified);
      auto arr = node.as_array();
      if (!arr) return wrong();
      std::vector<std::string> out;
      for (auto&& item : *arr) {
        auto s = item.as_string();
        if (!s) fail_at(pos_of(item), qualified + ": expected an array of strings, found " + with_article(describe_node_type(item)));
        out.push_back(spec.is_path ? resolve_path(s->get(), pos) : s->get());
      }
      return out;
    }
    case OptType::IntList: {
      auto arr = node.as_array();
      if (!arr) return wrong();
      std::vector<int64_t> out;
      for (auto&& item : *arr) {
        auto i = item.as_integer();
        if (!i) fail_at(pos_of(item), qualified + ": expected an array of integers, found " + with_article(describe_node_type(item)));
        out.push_back(i->get());
      }
      return out;
    }
  }
  return wrong();
}

OptValue value_from_text(const std::string& raw, const OptionSpec& spec, const std::string& qualified, const SourcePos& pos) {
  auto wrong = [&](const std::string& why) -> OptValue {
    fail_at(pos, qualified + ": '" + raw + "' is not " + why);
  };
  std::string text = raw;
  if (!valid_utf8(raw)) fail_at(pos, qualified + ": the value is not valid UTF-8");
  auto unquote = [](std::string s) {
    if (s.size() >= 2 && ((s.front() == '"' && s.back() == '"') || (s.front() == '\'' && s.back() == '\'')))
      return s.substr(1, s.size() - 2);
    return s;
  };
  switch (spec.type) {
    case OptType::Bool:
      if (text == "true") return true;
      if (text == "false") return false;
      return wrong("a boolean (true or false)");
    case OptType::Int: {
      if (spec.auto_value && unquote(text) == "auto") return *spec.auto_value;
      int64_t v = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec == std::errc::result_out_of_range) fail_at(pos, qualified + ": integer overflow in '" + raw + "'");
      if (ec != std::errc() || end != text.data() + text.size()) return wrong("an " + spec_expectation(spec));
      return v;
    }
    case OptType::Float: {
      char* end = nullptr;
      errno = 0;
      double v = std::strtod(text.c_str(), &end);
      if (text.empty() || end != text.c_str() + text.size()) return wrong("a number");
      if (errno == ERANGE && std::isinf(v)) fail_at(pos, qualified + ": '" + raw + "' overflows a double");
      return v;
    }
    case OptType::String:
      return spec.is_path ? resolve_path(unquote(text), pos) : unquote(text);
    case OptType::StringList: {
      // a,b  or  [a, "b,c", 'd']: items split on commas outside quotes.
      std::string body = text;
      if (body.size() >= 2 && body.front() == '[' && body.back() == ']') body = body.substr(1, body.size() - 2);
      std::vector<std::string> out;
      std::string item;
      bool quoted = false;
      char quote = 0;
      auto finish = [&] {
        size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
        std::string v = a == std::string::npos ? "" : item.substr(a, b - a + 1);
        if (!v.empty() || quoted) out.push_back(spec.is_path ? resolve_path(v, pos) : v);
        item.clear();
        quoted = false;
      };
      for (char c : body) {
        if (quote) {
          if (c == quote) quote = 0;
          else item += c;
        } else if (c == '"' || c == '\'') {
          quote = c;
          quoted = true;
        } else if (c == ',') {
          finish();
        } else {
          item += c;
        }
      }
      if (quote) return wrong("a list (a quote is not closed)");
      finish();
      return out;
    }
    case OptType::IntList: {
      // 3,1  or  [3, 1]
      std::string body = text;
      if (body.size() >= 2 && body.front() == '[' && body.back() == ']') body = body.substr(1, body.size() - 2);
      std::vector<int64_t> out;
      size_t start = 0;
      while (start <= body.size()) {
        size_t comma = body.find(',', start);
        std::string item = body.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
        item = a == std::string::npos ? "" : item.substr(a, b - a + 1);
        int64_t v = 0;
        auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
        if (item.empty() && out.empty() && comma == std::string::npos) break;  // []
        if (ec != std::errc() || end != item.data() + item.size()) return wrong("a list of integers");
        out.push_back(v);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      return out;
    }
  }
  return wrong("valid");
}

// ---- overrides -----------------------------------------------------------------------------

struct Override {
  std::string section;  // "parallel.data_parallel"
  std::string key;      // "plugin"
  std::string value;
  SourcePos pos;        // {"--set parallel.data_parallel.plugin=zero1"}
  bool used = false;
};

// Splits "section.key" at its last dot; refuses an unknown section.
std::pair<std::string, std::string> split_section_key(const std::string& path, const SourcePos& pos,
                                                      const std::string& form) {
  size_t dot = path.rfind('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == path.size())
    fail_at(pos, "expected " + form + " (the key needs its section, e.g. run.steps)");
  std::string section = path.substr(0, dot);
  std::vector<std::string> names;
  for (const auto& s : kSections) names.push_back(s.name);
  bool is_sink_section = section.rfind("log.", 0) == 0;
  if (!find_section(section) && !is_sink_section) {
    std::string hint = did_you_mean(section, names);
    fail_at(pos, "unknown section [" + section + "]" + (hint.empty() ? "" : " (did you mean [" + hint + "]?)"));
  }
  return {section, path.substr(dot + 1)};
}

std::vector<Override> parse_overrides(const std::vector<std::string>& raw) {
  std::vector<Override> out;
  for (const auto& text : raw) {
    SourcePos pos{"--set " + text, 0, 0};
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0)
      fail_at(pos, "expected section.key=value");
    std::string path = text.substr(0, eq);
    size_t dot = path.rfind('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == path.size())
      fail_at(pos, "expected section.key=value (the key needs its section, e.g. run.steps=10)");
    auto [section, key] = split_section_key(path, pos, "section.key=value");
    out.push_back(Override{section, key, text.substr(eq + 1), pos});
  }
  return out;
}

// --unset section.key: removes the key from the merged recipe, so its default
// (or the new plugin's) applies. A key the recipe does not set is refused.
void apply_unsets(toml::table& root, const std::vector<std::string>& unsets) {
  for (const auto& text : unsets) {
    SourcePos pos{"--unset " + text, 0, 0};
    auto [section, key] = split_section_key(text, pos, "section.key");
    toml::table* t = &root;
    std::stringstream ss(section);
    std::string part;
    while (t && std::getline(ss, part, '.')) {
      toml::node* node = t->get(part);
      t = node ? node->as_table() : nullptr;
    }
    if (!t || !t->contains(key)) fail_at(pos, section + "." + key + " is not set by the recipe; nothing to unset");
    t->erase(key);
  }
}

// ---- section resolution -------------------------------------------------------------------

const OptionSpec kPluginKey = opt_string("plugin", "", "the plugin that implements this section");

Options build_options(const std::string& section, const toml::table* table, const OptionSchema& schema,
                      std::vector<Override>& overrides, const std::vector<std::string>& skip_keys,
                      const SourcePos& section_pos, bool plugin_chosen_elsewhere = false) {
  std::map<std::string, Options::Entry> entries;
  std::vector<std::string> known;
  for (const auto& spec : schema) known.push_back(spec.key);
  if (table) {
    for (auto&& [k, node] : *table) {
      std::string key(k.str());
      if (std::find(skip_keys.begin(), skip_keys.end(), key) != skip_keys.end()) continue;
      const OptionSpec* spec = nullptr;
      for (const auto& s : schema)
        if (s.key == key) spec = &s;
      SourcePos pos = pos_of(node);
      if (k.source().begin.line) pos = SourcePos{pos.file, static_cast<int>(k.source().begin.line),
                                                 static_cast<int>(k.source().begin.column)};
      if (!spec) {
        std::string hint = did_you_mean(key, known);
        std::string msg = section + "." + key + ": unknown key" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)");
        if (hint.empty() && !known.empty()) msg += "; keys: " + join(known, ", ");
        if (known.empty()) msg += "; this section takes no options";
        fail_at(pos, msg);
      }
      OptValue v = value_from_node(node, *spec, section + "." + key);
      check_value(*spec, v, section + "." + key, pos_of(node), node_is_auto(node, *spec));
      entries[key] = Options::Entry{v, pos_of(node)};
    }
  }
  for (auto& o : overrides) {
    if (o.section != section || (o.key == "plugin" && plugin_chosen_elsewhere)) continue;
    const OptionSpec* spec = nullptr;
    for (const auto& s : schema)
      if (s.key == o.key) spec = &s;
    if (!spec) {
      std::string hint = did_you_mean(o.key, known);
      fail_at(o.pos, section + "." + o.key + ": unknown key" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
    }
    OptValue v = value_from_text(o.value, *spec, section + "." + o.key, o.pos);
    bool is_auto = spec->auto_value && (o.value == "auto" || o.value == "\"auto\"");
    check_value(*spec, v, section + "." + o.key, o.pos, is_auto);
    entries[o.key] = Options::Entry{v, o.pos};
    o.used = true;
  }
  for (const auto& spec : schema) {
    if (entries.count(spec.key)) continue;
    if (spec.required)
      fail_at(section_pos, "missing required key " + section + "." + spec.key + " (" + spec.doc + ")");
    entries[spec.key] = Options::Entry{spec.default_value, {}};
  }
  return Options(section, std::move(entries), section_pos);
}

const toml::table* subtable(const toml::table& root, const std::string& dotted, SourcePos& pos_out) {
  const toml::table* t = &root;
  std::stringstream ss(dotted);
  std::string part;
  const toml::node* node = nullptr;
  while (std::getline(ss, part, '.')) {
    node = t->get(part);
    if (!node) return nullptr;
    t = node->as_table();
    if (!t) fail_at(pos_of(*node), "[" + dotted + "] must be a table, found " + with_article(describe_node_type(*node)));
  }
  pos_out = pos_of(*node);
  return t;
}

// Keys of a plugin section's table that `schema` does not have.
std::vector<std::string> keys_not_in(const toml::table& table, const OptionSchema& schema) {
  std::vector<std::string> out;
  for (auto&& [k, node] : table) {
    std::string key(k.str());
    bool known = key == "plugin";
    for (const auto& spec : schema) known |= spec.key == key;
    if (!known) out.push_back(key);
  }
  return out;
}

// The launcher sets these; comm "auto" picks a process-per-rank communicator then.
bool launched_externally(const RecipeEnv& env) { return env.launcher_world > 0; }

}  // namespace

const OptionSchema& core_schema(const std::string& section) {
  static const std::map<std::string, OptionSchema> schemas = [] {
    std::map<std::string, OptionSchema> m;
    OptionSpec data = opt_int("data", 0, "data-parallel size; \"auto\" = world / (tensor * pipeline)", 1, 1 << 20);
    data.auto_value = 0;
    OptionSpec world = opt_int("world", 0, "number of ranks; \"auto\" = the launcher's, else tensor * pipeline * data", 1, 1 << 20);
    world.auto_value = 0;
    OptionSpec global = opt_int("global", 0, "samples per optimizer step; \"auto\" = micro * data", 1, int64_t(1) << 30);
    global.auto_value = 0;
    m["run"] = {opt_string("name", "weft", "run name"),
                opt_int("seed", 1234, "seed of parameter init, data order and sampling", 0, 9.0e18),
                opt_int("steps", 100, "optimizer steps to run", 1, 1e12),
                opt_string("out_dir", "", "output folder (relative to the working directory); \"\" = runs/<name>"),
                opt_string("on_nan", "stop",
                           "a step whose loss or gradient norm is NaN or infinite: stop (naming the step and the "
                           "last good checkpoint) or skip (no update; counted as skipped_steps)",
                           {"stop", "skip"}),
                opt_strings("stop_signals", {"SIGTERM", "SIGUSR1"},
                            "signals on which every rank finishes the step, writes a checkpoint and exits 0 "
                            "(a second one exits at once)"),
                opt_int("exit_interval", 0,
                        "stop after every step that is a multiple of this, with a checkpoint (Megatron's "
                        "--exit-interval; 0 = never)",
                        0, 1e12),
                opt_float("exit_duration_mins", 0.0,
                          "stop with a checkpoint after the first step that ends this many minutes after the start "
                          "(Megatron's --exit-duration-in-mins; 0 = never)",
                          0.0, 1e9)};
    m["batch"] = {opt_int("micro", 1, "samples per microbatch on one rank", 1, 1 << 20), global,
                  opt_int("rampup_start", 0,
                          "batch-size ramp-up (Megatron's --rampup-batch-size): the first global batch (0 = no ramp-up)",
                          0, int64_t(1) << 30),
                  opt_int("rampup_increment", 0, "ramp-up: samples added to the global batch at each increase", 0,
                          int64_t(1) << 30),
                  opt_int("rampup_samples", 0, "ramp-up: samples over which the batch grows from rampup_start to global",
                          0, 9.0e18)};
    m["parallel"] = {opt_int("tensor", 1, "tensor-parallel size", 1, 4096),
                     opt_int("pipeline", 1, "pipeline-parallel size (stages)", 1, 4096),
                     opt_int("expert", 1, "expert-parallel size (divides data)", 1, 4096), data, world};
    m["checkpoint"] = {opt_int("interval", 0, "steps between checkpoints; 0 = only the last step", 0, 1e12),
                       opt_int("keep", 0, "checkpoints kept; 0 = all", 0, 1e9),
                       opt_bool("resume", false, "continue from the latest checkpoint in out_dir"),
                       opt_bool("async", false,
                                "write checkpoints while training goes on (rank 0 holds the checkpoint in memory "
                                "until it is written; a second save waits for the first)")};
    m["log"] = {opt_int("interval", 1, "steps between metrics records", 1, 1e12),
                opt_strings("sinks", {"console", "jsonl"}, "metrics sinks (plugins of family metrics_sink)"),
                opt_bool("timers", false, "log each rank's time per step phase (min/max over ranks) at the end"),
                opt_string("level", "info", "log level", {"trace", "debug", "info", "warn", "error"})};
    m["eval"] = {opt_int("interval", 0, "steps between validation losses (val_loss); 0 = none", 0, 1e12),
                 opt_int("iters", 10, "global batches of the validation part per evaluation", 1, 1e9)};
    m["plugins"] = {opt_paths("paths", {}, "extra folders whose *.so files are plugin candidates")};
    return m;
  }();
  auto it = schemas.find(section);
  WEFT_ASSERT(it != schemas.end(), "no core schema for " + section);
  return it->second;
}

bool Recipe::has(const std::string& name) const {
  for (const auto& s : sections)
    if (s.name == name) return true;
  return false;
}

const RecipeSection& Recipe::section(const std::string& name) const {
  for (const auto& s : sections)
    if (s.name == name) return s;
  throw InternalError("recipe has no section " + name);
}

std::string Recipe::to_toml() const {
  std::string out = "# resolved recipe (includes merged, overrides applied, defaults filled)\n";
  for (const auto& s : sections) {
    out += "\n[" + s.name + "]\n";
    if (!s.family.empty() && s.family != "metrics_sink") out += "plugin = " + opt_value_str(s.plugin) + "\n";
    for (const auto& [key, entry] : s.options.entries()) {
      if (s.family.empty()) {
        const OptionSchema& schema = core_schema(s.name.rfind("log.", 0) == 0 ? "log" : s.name);
        bool is_auto = false;
        for (const auto& spec : schema)
          if (spec.key == key && spec.auto_value && std::get_if<int64_t>(&entry.value) &&
              std::get<int64_t>(entry.value) == *spec.auto_value)
            is_auto = true;
        if (is_auto) {
          out += key + " = \"auto\"\n";
          continue;
        }
      }
      out += key + " = " + opt_value_str(entry.value) + "\n";
    }
  }
  return out;
}

// Batch-size ramp-up: every global batch it passes through splits into whole microbatches.
static void check_rampup(const Options& batch, int64_t global, int64_t unit) {
  const int64_t start = batch.get_int("rampup_start"), inc = batch.get_int("rampup_increment"),
                samples = batch.get_int("rampup_samples");
  auto n = [](int64_t v) { return std::to_string(v); };
  if (start == 0) {
    if (inc != 0 || samples != 0)
      batch.fail(inc != 0 ? "rampup_increment" : "rampup_samples", "needs rampup_start (0 = no ramp-up)");
    return;
  }
  if (start >= global) batch.fail("rampup_start", "rampup_start " + n(start) + " is not below batch.global " + n(global));
  if (inc < 1) batch.fail("rampup_increment", "must be >= 1 with rampup_start " + n(start));
  if ((global - start) % inc != 0)
    batch.fail("rampup_increment", "global " + n(global) + " - rampup_start " + n(start) + " = " + n(global - start) +
                                       " is not a multiple of rampup_increment " + n(inc));
  if (start % unit != 0 || inc % unit != 0)
    batch.fail(start % unit != 0 ? "rampup_start" : "rampup_increment",
               "rampup_start " + n(start) + " and rampup_increment " + n(inc) + " must be multiples of micro x data = " +
                   n(unit));
  if (samples < 1) batch.fail("rampup_samples", "must be >= 1 with rampup_start " + n(start));
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& raw_overrides, const Registry& registry,
                   const PluginDirLoader& load_dirs, const RecipeEnv& env) {
  std::vector<Override> overrides = parse_overrides(raw_overrides);
  std::vector<std::string> stack;
  toml::table root = load_with_includes(path, SourcePos{}, stack);
  apply_unsets(root, env.unsets);

  // Top-level names must be known sections, each a table.
  std::vector<std::string> top = top_level_names();
  for (auto&& [k, node] : root) {
    std::string key(k.str());
    SourcePos pos{k.source().path ? *k.source().path : path, static_cast<int>(k.source().begin.line),
                  static_cast<int>(k.source().begin.column)};
    if (std::find(top.begin(), top.end(), key) == top.end()) {
      std::string hint = did_you_mean(key, top);
      fail_at(pos, "unknown section [" + key + "]" + (hint.empty() ? "" : " (did you mean [" + hint + "]?)"));
    }
    if (!node.is_table()) fail_at(pos, "[" + key + "] must be a table, found " + with_article(describe_node_type(node)));
  }

  Recipe recipe;
  recipe.path = path;

  // [plugins] first: its folders may provide the plugins the other sections name.
  {
    SourcePos spos;
    const toml::table* t = subtable(root, "plugins", spos);
    Options opts = build_options("plugins", t, core_schema("plugins"), overrides, {}, spos);
    const auto& dirs = opts.get_strings("paths");
    for (size_t i = 0; i < dirs.size(); ++i) {
      std::error_code ec;
      if (!fs::is_directory(dirs[i], ec)) opts.fail("paths", "'" + dirs[i] + "' is not a directory");
    }
    if (load_dirs && !dirs.empty()) load_dirs(dirs);
  }

  for (const SectionDef& def : kSections) {
    std::string name = def.name;
    SourcePos spos{path, 0, 0};
    const toml::table* t = subtable(root, name, spos);
    if (!t) spos = SourcePos{path, 0, 0};
    RecipeSection section;
    section.name = name;
    section.family = def.family;
    if (section.family.empty()) {
      std::vector<std::string> skip;
      if (name == "parallel")
        skip = {"tensor_parallel", "pipeline_schedule", "data_parallel", "expert_parallel"};
      if (name == "log" && t) {
        for (auto&& [k, node] : *t)
          if (node.is_table()) skip.push_back(std::string(k.str()));
      }
      section.options = build_options(name, t, core_schema(name), overrides, skip, spos);
      recipe.sections.push_back(std::move(section));
      continue;
    }

    // Plugin section: choose the plugin, then validate against its schema.
    std::string plugin = def.default_plugin;
    SourcePos plugin_pos = spos;
    bool explicit_choice = false;
    if (t) {
      if (const toml::node* p = t->get("plugin")) {
        if (!p->is_string()) fail_at(pos_of(*p), name + ".plugin: expected string, got " + describe_node_type(*p));
        plugin = p->as_string()->get();
        plugin_pos = pos_of(*p);
        explicit_choice = true;
      }
    }
    const std::string file_plugin = plugin;
    for (auto& o : overrides) {
      if (o.section == name && o.key == "plugin") {
        plugin = o.value;
        plugin_pos = o.pos;
        explicit_choice = true;
        o.used = true;
      }
    }
    if (plugin.empty()) fail_at(spos, "missing required key " + name + ".plugin (which " + def.family + " plugin to use)");
    if (section.family == "communicator" && plugin == "auto") {
      plugin = launched_externally(env) ? "mpi" : "local";
    }
    const FactoryRecord* record = registry.find(def.family, plugin);
    if (!record) {
      if (!def.needed && !t && !explicit_choice) continue;  // optional family, not asked for
      std::vector<std::string> names;
      for (const FactoryRecord* r : registry.list(def.family)) names.push_back(r->name);
      std::string hint = did_you_mean(plugin, names);
      std::string msg = name + ".plugin: no " + def.family + " plugin named '" + plugin + "'";
      if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
      msg += names.empty() ? "; none is installed" : "; available: " + join(names, ", ");
      fail_at(plugin_pos, msg);
    }
    section.plugin = plugin;
    std::vector<std::string> skip = {"plugin"};
    if (t && plugin != file_plugin) {
      std::vector<std::string> dropped = keys_not_in(*t, record->schema);
      std::vector<std::string> qualified;
      for (const auto& key : dropped) qualified.push_back(name + "." + key);
      if (!dropped.empty())
        recipe.notes.push_back(name + ".plugin = \"" + plugin + "\" (--set) drops " + join(qualified, ", ") +
                               ": options of '" + file_plugin + "' that '" + plugin + "' does not have");
      skip.insert(skip.end(), dropped.begin(), dropped.end());
    }
    section.options = build_options(name, t, record->schema, overrides, skip, spos, true);
    recipe.sections.push_back(std::move(section));
  }

  // Metrics sinks: each must exist; [log.<sink>] tables hold their options.
  {
    const Options& log = recipe.options("log");
    SourcePos lpos;
    const toml::table* logt = subtable(root, "log", lpos);
    std::vector<std::string> sink_names;
    for (const FactoryRecord* r : registry.list("metrics_sink")) sink_names.push_back(r->name);
    std::set<std::string> sinks;
    for (const auto& sink : log.get_strings("sinks")) {
      const FactoryRecord* record = registry.find("metrics_sink", sink);
      if (!record) {
        std::string hint = did_you_mean(sink, sink_names);
        log.fail("sinks", "no metrics_sink plugin named '" + sink + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                              (sink_names.empty() ? "" : "; available: " + join(sink_names, ", ")));
      }
      if (!sinks.insert(sink).second) log.fail("sinks", "'" + sink + "' is listed twice");
      RecipeSection section;
      section.name = "log." + sink;
      section.family = "metrics_sink";
      section.plugin = sink;
      SourcePos spos{path, 0, 0};
      const toml::table* t = logt ? subtable(root, "log." + sink, spos) : nullptr;
      section.options = build_options(section.name, t, record->schema, overrides, {}, spos);
      recipe.sections.push_back(std::move(section));
    }
    if (logt) {
      for (auto&& [k, node] : *logt) {
        if (node.is_table() && !sinks.count(std::string(k.str())))
          fail_at(pos_of(node), "[log." + std::string(k.str()) + "] configures a sink that log.sinks does not list");
      }
    }
  }
  for (const auto& o : overrides)
    if (!o.used) fail_at(o.pos, "[" + o.section + "] is not part of this recipe");

  // Cross-section checks: the layout and the batch must fit together.
  const Options& par = recipe.options("parallel");
  ParallelSizes sizes;
  sizes.tp = static_cast<int>(par.get_int("tensor"));
  sizes.pp = static_cast<int>(par.get_int("pipeline"));
  sizes.ep = static_cast<int>(par.get_int("expert"));
  int64_t dp = par.get_int("data");
  int64_t world = par.get_int("world");
  int64_t model_ranks = int64_t(sizes.tp) * sizes.pp;
  if (env.launcher_world > 0) {
    if (world != 0 && world != env.launcher_world)
      par.fail("world", "the recipe says " + std::to_string(world) + " ranks but the launcher started " +
                            std::to_string(env.launcher_world));
    world = env.launcher_world;
  }
  if (world == 0) world = model_ranks * (dp == 0 ? 1 : dp);
  if (dp == 0) {
    if (world % model_ranks != 0)
      par.fail("world", "world " + std::to_string(world) + " is not divisible by tensor " + std::to_string(sizes.tp) +
                            " x pipeline " + std::to_string(sizes.pp));
    dp = world / model_ranks;
  }
  if (model_ranks * dp != world)
    par.fail("data", "tensor " + std::to_string(sizes.tp) + " x pipeline " + std::to_string(sizes.pp) + " x data " +
                         std::to_string(dp) + " = " + std::to_string(model_ranks * dp) + " ranks, but world is " +
                         std::to_string(world));
  if (dp % sizes.ep != 0)
    par.fail("expert", "expert " + std::to_string(sizes.ep) + " does not divide data " + std::to_string(dp));
  sizes.dp = static_cast<int>(dp);
  recipe.sizes = sizes;
  recipe.world = static_cast<int>(world);

  const Options& batch = recipe.options("batch");
  int64_t micro = batch.get_int("micro");
  int64_t global = batch.get_int("global");
  if (global == 0) global = micro * dp;
  if (global % (micro * dp) != 0)
    batch.fail("global", "global batch " + std::to_string(global) + " is not divisible by micro " + std::to_string(micro) +
                             " x data " + std::to_string(dp) + " = " + std::to_string(micro * dp));
  recipe.grad_accum = global / (micro * dp);
  check_rampup(batch, global, micro * dp);

  // Write the resolved values back so the saved recipe is explicit.
  for (auto& s : recipe.sections) {
    if (s.name == "parallel" || s.name == "batch") {
      auto entries = s.options.entries();
      if (s.name == "parallel") {
        entries["data"].value = int64_t(dp);
        entries["world"].value = int64_t(world);
      } else {
        entries["global"].value = global;
      }
      s.options = Options(s.name, entries, s.options.section_pos());
    }
  }
  return recipe;
}

std::string section_family(const std::string& section) {
  const SectionDef* def = find_section(section);
  return def ? def->family : "";
}

const OptionSpec* recipe_option(const Registry& registry, const std::string& section, const std::string& plugin,
                                const std::string& key) {
  const SectionDef* def = find_section(section);
  if (!def) return nullptr;
  const OptionSchema* schema = nullptr;
  if (*def->family == '\0') {
    schema = &core_schema(section);
  } else {
    const FactoryRecord* record = registry.find(def->family, plugin.empty() ? def->default_plugin : plugin);
    if (!record) return nullptr;
    schema = &record->schema;
  }
  for (const OptionSpec& spec : *schema)
    if (spec.key == key) return &spec;
  return nullptr;
}

}  // namespace weft
