// A recipe being written by `weft import`: each key with the flag (or config
// entry) it came from, typed and range-checked by the schema of the running
// weft, so that only keys this build takes are written. A key this build does
// not have is reported as "not in this version" instead; when a later weft
// adds it, the same mapping writes it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft::cli {

struct DraftKey {
  std::string target;        // "section.key", or alternatives "a.key|b.key" until resolved
  std::string section, key;  // "parallel.data_parallel", "plugin" (the first alternative until resolved)
  std::string raw;           // the text as given, typed when resolved
  std::vector<std::string> list;  // for StringList keys
  bool is_list = false;
  OptValue value;            // after resolve()
  std::string source;        // "--lr 1.5e-4", "ds_config.json: gradient_clipping = 1.0", "Megatron's default"
  bool droppable = false;    // not part of the layout: left out (with a line on stderr) when this weft refuses it
  bool is_default = false;   // written because the source's default differs from weft's; not the user's flag
  int line = 0;              // line in the rendered TOML
};

// A flag or entry that is not written, and why.
struct Unmapped {
  std::string source, reason;
  bool strict_refuses = true;  // --strict exits 2 on it (false: no effect on the results, e.g. a fusion switch)
};

class RecipeDraft {
 public:
  explicit RecipeDraft(const Registry& registry) : registry_(registry) {}

  // Records `target` = raw. target is "section.key", or alternatives
  // "a.key|b.key" (the first this weft knows wins). Typed in resolve().
  void set(const std::string& target, const std::string& raw, const std::string& source, bool droppable = false);
  void set_list(const std::string& target, const std::vector<std::string>& values, const std::string& source,
                bool droppable = false);
  // Like set, but only when no flag set the key: a source default that differs from weft's.
  void set_default(const std::string& target, const std::string& raw, const std::string& what);
  void unmapped(const std::string& source, const std::string& reason, bool strict_refuses = true);
  void comment(const std::string& line) { comments_.push_back(line); }

  // The raw value of section.key if some source set it.
  const DraftKey* find(const std::string& section, const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& section, const std::string& key) const;
  std::optional<double> get_float(const std::string& section, const std::string& key) const;
  bool remove(const std::string& section, const std::string& key);

  // Plugins first, then every other key against its section's plugin: typed
  // by the schema, range-checked (weft::Error naming the source), two sources
  // disagreeing on one key refused, unknown keys moved to unmapped().
  void resolve();
  // The TOML text, sections in the resolved recipe's order, each key with a
  // comment naming its source; sets DraftKey::line.
  std::string render(const std::string& header);

  std::vector<DraftKey>& keys() { return keys_; }
  const std::vector<Unmapped>& unmapped_list() const { return unmapped_; }

 private:
  const Registry& registry_;
  std::vector<DraftKey> keys_;
  std::vector<Unmapped> unmapped_;
  std::vector<std::string> comments_;
  std::vector<std::string> defaults_;  // targets set by set_default, kept out when a flag sets them

  void add(const std::string& target, DraftKey key);
};

}  // namespace weft::cli
