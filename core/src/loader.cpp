#include "weft/loader.hpp"

#include <dlfcn.h>
#include <elf.h>

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "text_util.hpp"
#include "weft/file.hpp"

namespace fs = std::filesystem;

namespace weft {

namespace {

// Folders of the source tree that hold plugins; the build tree mirrors them.
const char* const kPluginRoots[] = {"plugins", "parallel", "models", "optim"};

std::string fingerprint_field(const std::string& fp, const std::string& field) {
  std::string key = field + "=";
  size_t at = fp.find(key);
  if (at == std::string::npos) return "";
  size_t end = fp.find(' ', at);
  return fp.substr(at + key.size(), end == std::string::npos ? std::string::npos : end - at - key.size());
}

// dlerror() text without the leading "PATH: " that repeats the file name.
std::string dl_cause(const std::string& path) {
  const char* err = dlerror();
  std::string text = err ? err : "unknown dlopen error";
  if (text.rfind(path + ": ", 0) == 0) text = text.substr(path.size() + 2);
  size_t undefined = text.find("undefined symbol: ");
  if (undefined != std::string::npos) return "unresolved symbol: " + text.substr(undefined + 18);
  return "cannot be loaded: " + text;
}

bool has_elf_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
}

// Whether the ELF file's dynamic symbol table defines `symbol`. Read with
// bounds checks and without loading the file: dlopen would run its
// constructors (an ASan runtime on the path would end the process).
bool elf_defines(const std::string& path, const std::string& symbol) {
  InputFile file(path);
  Elf64_Ehdr eh{};
  if (file.size() < sizeof eh) return false;
  file.read_exact(0, &eh, sizeof eh);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_shentsize != sizeof(Elf64_Shdr))
    return false;
  auto inside = [&](uint64_t offset, uint64_t bytes) { return offset <= file.size() && bytes <= file.size() - offset; };
  if (!inside(eh.e_shoff, uint64_t(eh.e_shnum) * sizeof(Elf64_Shdr))) return false;
  std::vector<Elf64_Shdr> sections(eh.e_shnum);
  file.read_exact(eh.e_shoff, sections.data(), sections.size() * sizeof(Elf64_Shdr));
  for (const Elf64_Shdr& sh : sections) {
    if (sh.sh_type != SHT_DYNSYM || sh.sh_link >= sections.size()) continue;
    const Elf64_Shdr& strtab = sections[sh.sh_link];
    if (!inside(sh.sh_offset, sh.sh_size) || !inside(strtab.sh_offset, strtab.sh_size)) return false;
    std::vector<Elf64_Sym> syms(sh.sh_size / sizeof(Elf64_Sym));
    std::string names(strtab.sh_size, '\0');
    file.read_exact(sh.sh_offset, syms.data(), syms.size() * sizeof(Elf64_Sym));
    file.read_exact(strtab.sh_offset, names.data(), names.size());
    for (const Elf64_Sym& sym : syms) {
      if (sym.st_shndx == SHN_UNDEF || sym.st_name >= names.size()) continue;
      const char* name = names.data() + sym.st_name;
      size_t len = strnlen(name, names.size() - sym.st_name);
      if (len == symbol.size() && std::memcmp(name, symbol.data(), len) == 0) return true;
    }
  }
  return false;
}

void add_so_files(const fs::path& dir, std::vector<std::string>& out) {
  std::error_code ec;
  std::vector<std::string> found;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.extension() == ".so" && !it->is_directory(ec)) found.push_back(p.string());
  }
  std::sort(found.begin(), found.end());
  out.insert(out.end(), found.begin(), found.end());
}

}  // namespace

std::vector<std::string> build_tree_plugin_dirs(const std::string& build_root) {
  std::vector<std::string> dirs;
  for (const char* root : kPluginRoots) {
    std::error_code ec;
    fs::path base = fs::path(build_root) / root;
    if (!fs::is_directory(base, ec)) continue;
    std::vector<std::string> subdirs;
    for (fs::directory_iterator it(base, ec), end; !ec && it != end; it.increment(ec))
      if (it->is_directory()) subdirs.push_back(it->path().string());
    std::sort(subdirs.begin(), subdirs.end());
    dirs.insert(dirs.end(), subdirs.begin(), subdirs.end());
  }
  return dirs;
}

std::vector<std::string> default_plugin_dirs() {
  std::vector<std::string> dirs;
  boost::dll::fs::error_code ec;
  fs::path exe_dir = fs::path(boost::dll::program_location(ec).string()).parent_path();
  if (!ec) {
    // Build tree: build/weft beside build/plugins/<name>/libweft-<name>.so, ...
    dirs = build_tree_plugin_dirs(exe_dir.string());
    // Install prefix: <prefix>/<bindir>/weft and <prefix>/<libdir>/weft/plugins.
    fs::path prefix = exe_dir;
    for (const auto& part : fs::path(WEFT_BINDIR)) {
      (void)part;
      prefix = prefix.parent_path();
    }
    fs::path installed = prefix / WEFT_PLUGIN_SUBDIR;
    std::error_code dir_ec;
    if (fs::is_directory(installed, dir_ec)) dirs.push_back(installed.string());
  }
  if (const char* env = std::getenv("WEFT_PLUGIN_PATH")) {
    std::string list = env;
    size_t start = 0;
    while (start <= list.size()) {
      size_t colon = list.find(':', start);
      std::string dir = list.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
      if (!dir.empty()) dirs.push_back(dir);
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
  }
  return dirs;
}

LoadedPlugin load_plugin_file(Registry& registry, const std::string& path) {
  auto refuse = [&](const std::string& cause) -> Error { return Error(path + ": " + cause); };
  std::error_code fs_ec;
  if (!fs::is_regular_file(path, fs_ec)) throw refuse("not a regular file");
  if (!has_elf_magic(path)) throw refuse("not a shared library (no ELF header)");
  bool has_entry = false;
  try {
    has_entry = elf_defines(path, "weft_plugin_info");
  } catch (const Error& e) {
    throw refuse(std::string("unreadable ELF file: ") + e.what());
  }
  if (!has_entry) throw refuse("missing entry point 'weft_plugin_info' (not a weft plugin; use WEFT_PLUGIN)");

  auto library = std::make_shared<boost::dll::shared_library>();
  boost::dll::fs::error_code ec;
  // RTLD_NOW reports unresolved symbols here, not at first call; plugins are never unloaded.
  auto mode = static_cast<boost::dll::load_mode::type>(RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  dlerror();
  library->load(boost::dll::fs::path(fs::absolute(path).string()), mode, ec);
  if (ec || !library->is_loaded()) throw refuse(dl_cause(fs::absolute(path).string()));
  if (!library->has("weft_plugin_info"))
    throw refuse("missing entry point 'weft_plugin_info' (not a weft plugin; use WEFT_PLUGIN)");

  const PluginInfo* info = library->get_alias<const PluginInfo*()>("weft_plugin_info")();
  if (!info) throw refuse("entry point returned no plugin info");
  if (info->abi_version != kAbiVersion)
    throw refuse("ABI version " + std::to_string(info->abi_version) + ", this weft expects " +
                 std::to_string(kAbiVersion) + " (rebuild the plugin against this SDK)");
  if (!info->family || !info->name || !info->version || !info->fingerprint || !info->register_factories)
    throw refuse("malformed plugin info (null field)");
  std::string fingerprint = info->fingerprint;
  std::string ours = WEFT_BUILD_FINGERPRINT;
  if (fingerprint_field(fingerprint, "cxx11abi") != fingerprint_field(ours, "cxx11abi"))
    throw refuse("built with another libstdc++ ABI (plugin '" + fingerprint + "', weft '" + ours + "')");

  Registry staged;
  try {
    info->register_factories(staged);
  } catch (const std::exception& e) {
    throw refuse(std::string("registration failed: ") + e.what());
  } catch (...) {
    throw refuse("registration failed: threw something that is not a std::exception");
  }
  if (staged.records().empty()) throw refuse("registers no factories");
  for (const FactoryRecord& r : staged.records()) {
    if (const FactoryRecord* old = registry.find(r.family, r.name))
      throw refuse("duplicate plugin name " + r.family + "/" + r.name + " (already provided by " +
                   (old->plugin_file.empty() ? std::string("the core") : old->plugin_file) + ")");
  }
  for (FactoryRecord& r : staged.records()) {
    r.plugin_file = path;
    r.plugin_version = info->version;
    r.library = library;
    registry.add_record(std::move(r));
  }
  return LoadedPlugin{path, info->family, info->name, info->version, fingerprint};
}

void load_plugin_dirs(Registry& registry, const std::vector<std::string>& dirs, PluginScan& scan) {
  std::set<std::string> seen;
  for (const auto& p : scan.loaded) seen.insert(fs::weakly_canonical(p.path).string());
  for (const auto& r : scan.refused) seen.insert(fs::weakly_canonical(r.path).string());
  std::vector<std::string> files;
  for (const auto& dir : dirs) {
    std::error_code ec;
    // A mistyped WEFT_PLUGIN_PATH entry is reported like a refused file, not ignored.
    if (!fs::is_directory(dir, ec)) {
      if (seen.insert(dir).second) scan.refused.push_back({dir, "plugin folder not found"});
      continue;
    }
    add_so_files(dir, files);
  }
  for (const auto& file : files) {
    std::string canonical = fs::weakly_canonical(file).string();
    if (!seen.insert(canonical).second) continue;
    try {
      scan.loaded.push_back(load_plugin_file(registry, file));
    } catch (const Error& e) {
      std::string msg = e.what();
      scan.refused.push_back({file, msg.substr(file.size() + 2)});
    }
  }
}

}  // namespace weft
