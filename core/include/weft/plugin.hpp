// The plugin ABI. A plugin .so exports one entry point, `weft_plugin_info`
// (a Boost.DLL alias), returning a POD PluginInfo. The core checks the ABI
// version first, then calls `register_factories`, which adds one or more
// factories (possibly of several families) to the core's Registry.
// WEFT_PLUGIN writes all of it:
//
//   static void register_cpu(weft::Registry& r) { r.add<weft::Backend>("cpu", schema, doc, make); }
//   WEFT_PLUGIN("backend", "cpu", "0.1.0", register_cpu)
#pragma once

#include <boost/config.hpp>
#include <boost/dll/alias.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/error.hpp"
#include "weft/options.hpp"

namespace weft {

// Bump whenever any interface under weft/ changes layout or meaning.
inline constexpr uint32_t kAbiVersion = 8;

class Registry;

// Plain data, no C++ types: stays readable across compilers.
struct PluginInfo {
  uint32_t abi_version;      // first field, always: kAbiVersion at build time
  const char* family;        // primary family, e.g. "backend"
  const char* name;          // plugin name, e.g. "cpu"
  const char* version;       // the plugin's own version
  const char* fingerprint;   // build fingerprint, see build_fingerprint()
  void (*register_factories)(Registry& registry);
};

// The families a plugin may provide (docs/plugins.md).
const std::vector<std::string>& plugin_families();

// Compiler, libstdc++ dual ABI and CUDA version of this translation unit's build.
#define WEFT_STR2(x) #x
#define WEFT_STR(x) WEFT_STR2(x)
#ifdef __CUDACC_VER_MAJOR__
#define WEFT_CUDA_FINGERPRINT " cuda=" WEFT_STR(__CUDACC_VER_MAJOR__) "." WEFT_STR(__CUDACC_VER_MINOR__)
#else
#define WEFT_CUDA_FINGERPRINT ""
#endif
#define WEFT_BUILD_FINGERPRINT                                                           \
  "gcc=" WEFT_STR(__GNUC__) " cxx11abi=" WEFT_STR(_GLIBCXX_USE_CXX11_ABI) " abi=" \
  WEFT_STR(WEFT_ABI_VERSION_LITERAL) WEFT_CUDA_FINGERPRINT
#define WEFT_ABI_VERSION_LITERAL 8
static_assert(WEFT_ABI_VERSION_LITERAL == kAbiVersion, "keep the literal in step with kAbiVersion");

// One registered factory. `factory` points at FamilyTraits<I>::Factory of its family.
struct FactoryRecord {
  std::string family;
  std::string name;
  std::string doc;
  OptionSchema schema;
  std::shared_ptr<const void> factory;
  std::string plugin_file;  // the .so that registered it (empty: built into the core)
  std::string plugin_version;
  std::shared_ptr<void> library;  // keeps the plugin's library mapped while the factory lives
};

// Each family header specialises this: kName and the Factory signature.
template <class Interface>
struct FamilyTraits;

class Registry {
 public:
  template <class Interface>
  void add(std::string name, OptionSchema schema, std::string doc,
           typename FamilyTraits<Interface>::Factory factory) {
    using F = typename FamilyTraits<Interface>::Factory;
    FactoryRecord record;
    record.family = FamilyTraits<Interface>::kName;
    record.name = std::move(name);
    record.doc = std::move(doc);
    record.schema = std::move(schema);
    record.factory = std::make_shared<const F>(std::move(factory));
    add_record(std::move(record));
  }

  // Throws weft::Error when family/name is not registered (with a did-you-mean).
  // The factory returned throws weft::Error naming the plugin when the
  // plugin's factory hands back no object.
  template <class Interface>
  typename FamilyTraits<Interface>::Factory factory(const std::string& name) const {
    const FactoryRecord& record = get(FamilyTraits<Interface>::kName, name);
    using F = typename FamilyTraits<Interface>::Factory;
    const F* f = static_cast<const F*>(record.factory.get());
    if (!f || !*f) throw Error(describe(record) + ": registered an empty factory");
    return non_null(*f, describe(record));
  }

  // "plugin family/name (FILE)" for messages about what a plugin handed the core.
  static std::string describe(const FactoryRecord& record);

  void add_record(FactoryRecord record);
  const FactoryRecord* find(const std::string& family, const std::string& name) const;
  const FactoryRecord& get(const std::string& family, const std::string& name) const;
  std::vector<const FactoryRecord*> list(const std::string& family = "") const;
  std::vector<FactoryRecord>& records() { return records_; }

 private:
  template <class R, class... Args>
  static std::function<R(Args...)> non_null(const std::function<R(Args...)>& f, const std::string& who) {
    return [f, who](Args... args) -> R {
      R made = f(std::forward<Args>(args)...);
      if (!made) throw Error(who + ": the factory returned no object");
      return made;
    };
  }

  std::vector<FactoryRecord> records_;
};

}  // namespace weft

#define WEFT_PLUGIN(FAMILY, NAME, VERSION, REGISTER_FN)                                      \
  namespace {                                                                                \
  const ::weft::PluginInfo* weft_plugin_info_impl() {                                        \
    static const ::weft::PluginInfo info{::weft::kAbiVersion, FAMILY, NAME, VERSION,         \
                                         WEFT_BUILD_FINGERPRINT, &REGISTER_FN};              \
    return &info;                                                                            \
  }                                                                                          \
  }                                                                                          \
  BOOST_DLL_ALIAS(weft_plugin_info_impl, weft_plugin_info)
