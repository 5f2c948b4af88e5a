// Plugin options: each plugin declares a schema (key, type, default, allowed
// values or range, one-line doc); the core validates the plugin's recipe
// section against it before anything runs and hands the plugin typed Options.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace weft {

// Where a value came from: recipe file:line:col, a `--set` flag, or a default.
struct SourcePos {
  std::string file;  // recipe path, or "--set section.key" for overrides; empty = default
  int line = 0;
  int col = 0;
  bool known() const { return !file.empty(); }
  std::string str() const;  // "file:line:col" / "file" / ""
};

enum class OptType { Bool, Int, Float, String, StringList, IntList };
const char* opt_type_name(OptType type);

using OptValue = std::variant<bool, int64_t, double, std::string, std::vector<std::string>, std::vector<int64_t>>;

struct OptionSpec {
  std::string key;
  OptType type = OptType::String;
  OptValue default_value;          // ignored when required
  std::string doc;                 // one line
  std::vector<std::string> choices;  // String: allowed values (empty = any)
  std::optional<double> min;       // Int/Float: inclusive range
  std::optional<double> max;
  bool required = false;
  bool is_path = false;            // String/StringList: paths relative to the recipe file
  std::optional<int64_t> auto_value;  // Int: the string "auto" stands for this value
  // StringList: a recipe may also give a table {item = weight}; it reads as the
  // list [weight, item, weight, item, ...] in the file's order, each weight a
  // number >= 0 written as a decimal string (a blend: Megatron's --data-path).
  bool weighted_table = false;
};
using OptionSchema = std::vector<OptionSpec>;

// Builders that keep schemas short and readable.
OptionSpec opt_bool(std::string key, bool def, std::string doc);
OptionSpec opt_int(std::string key, int64_t def, std::string doc,
                   std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt);
OptionSpec opt_float(std::string key, double def, std::string doc,
                     std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt);
OptionSpec opt_string(std::string key, std::string def, std::string doc,
                      std::vector<std::string> choices = {});
OptionSpec opt_strings(std::string key, std::vector<std::string> def, std::string doc);
OptionSpec opt_ints(std::string key, std::vector<int64_t> def, std::string doc);
OptionSpec opt_path(std::string key, std::string def, std::string doc);
OptionSpec opt_paths(std::string key, std::vector<std::string> def, std::string doc);
OptionSpec required(OptionSpec spec);
OptionSpec weighted_table(OptionSpec spec);  // StringList: also accepts {item = weight}

std::string opt_value_str(const OptValue& value);  // TOML literal

// The validated values of one recipe section, every schema key present.
class Options {
 public:
  struct Entry {
    OptValue value;
    SourcePos pos;  // unknown for defaults
  };

  Options() = default;
  Options(std::string section, std::map<std::string, Entry> entries, SourcePos section_pos = {});

  const std::string& section() const { return section_; }
  const SourcePos& section_pos() const { return section_pos_; }
  bool has(const std::string& key) const { return entries_.count(key) != 0; }

  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // Int values widen
  const std::string& get_string(const std::string& key) const;
  const std::vector<std::string>& get_strings(const std::string& key) const;
  const std::vector<int64_t>& get_ints(const std::string& key) const;
  const SourcePos& where(const std::string& key) const;

  // Throws weft::Error "file:line:col: section.key: message" (or without the
  // position when the value is a default).
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

  const std::map<std::string, Entry>& entries() const { return entries_; }

 private:
  const Entry& entry(const std::string& key) const;
  std::string section_;
  SourcePos section_pos_;
  std::map<std::string, Entry> entries_;
};

// Options of `section` as a recipe would give them when it sets `values` and
// leaves every other key of `schema` at its default (tests, plugin authors).
Options options_with_defaults(const OptionSchema& schema, const std::string& section,
                              const std::map<std::string, OptValue>& values = {});

}  // namespace weft
