#include "worker/private_copy.h"

#include "base/subprocess.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace shoal {

namespace fs = std::filesystem;

namespace {

constexpr unsigned char kGnuUnique = 10;  // STB_GNU_UNIQUE

std::vector<std::string> Words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Visits the binding byte of every symbol of .symtab and .dynsym.
template <typename Fn>
Result<int> ForEachSymbolBinding(const std::string& path, bool write, Fn fn) {
  std::fstream f(path, std::ios::in | std::ios::binary | (write ? std::ios::out : std::ios::in));
  if (!f) return Status::FromErrno("open " + path, errno);
  Elf64_Ehdr eh;
  if (!f.read(reinterpret_cast<char*>(&eh), sizeof eh) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
      eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB ||
      eh.e_shentsize != sizeof(Elf64_Shdr)) {
    return Status::BadRequest(path + " is not a 64-bit little-endian ELF file");
  }
  int n = 0;
  for (int i = 0; i < eh.e_shnum; ++i) {
    Elf64_Shdr sh;
    f.seekg(static_cast<std::streamoff>(eh.e_shoff + static_cast<uint64_t>(i) * sizeof sh));
    if (!f.read(reinterpret_cast<char*>(&sh), sizeof sh)) return Status::BadRequest(path + ": truncated section table");
    if ((sh.sh_type != SHT_SYMTAB && sh.sh_type != SHT_DYNSYM) || sh.sh_entsize != sizeof(Elf64_Sym)) continue;
    std::vector<Elf64_Sym> syms(sh.sh_size / sizeof(Elf64_Sym));
    f.seekg(static_cast<std::streamoff>(sh.sh_offset));
    if (!f.read(reinterpret_cast<char*>(syms.data()), static_cast<std::streamsize>(syms.size() * sizeof(Elf64_Sym)))) {
      return Status::BadRequest(path + ": truncated symbol table");
    }
    bool changed = false;
    for (auto& s : syms) {
      if (fn(&s.st_info)) {
        ++n;
        changed = true;
      }
    }
    if (write && changed) {
      f.seekp(static_cast<std::streamoff>(sh.sh_offset));
      f.write(reinterpret_cast<const char*>(syms.data()), static_cast<std::streamsize>(syms.size() * sizeof(Elf64_Sym)));
      if (!f) return Status::FromErrno("write " + path, errno);
    }
  }
  return n;
}

uint64_t Fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// Where the dynamic linker would find `needed` for `origin`: its run path ($ORIGIN
// expanded), then the usual library folders.
std::string FindNeeded(const std::string& needed, const std::string& origin, const std::string& rpath) {
  std::vector<std::string> dirs;
  std::string dir = fs::path(origin).parent_path().string();
  std::stringstream rp(rpath);
  for (std::string d; std::getline(rp, d, ':');) {
    if (auto p = d.find("$ORIGIN"); p != std::string::npos) d.replace(p, 7, dir);
    if (!d.empty()) dirs.push_back(d);
  }
  for (const char* d : {"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib",
                        "/usr/local/lib"}) {
    dirs.push_back(d);
  }
  std::error_code ec;
  for (const auto& d : dirs) {
    if (fs::exists(fs::path(d) / needed, ec)) return (fs::path(d) / needed).string();
  }
  return "";
}

}  // namespace

Result<std::string> FindPatchelf() {
  if (const char* p = getenv("SHOAL_PATCHELF"); p != nullptr && *p != '\0') return std::string(p);
  const char* path = getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  for (std::string d; std::getline(ss, d, ':');) {
    std::string c = d + "/patchelf";
    if (access(c.c_str(), X_OK) == 0) return c;
  }
  return Status(Code::kUnavailable,
                "patchelf not found on PATH (install the 'patchelf' package, or set SHOAL_PATCHELF); "
                "it makes the private library copies that several interpreters per worker need");
}

Result<int> RemoveUniqueSymbols(const std::string& path) {
  return ForEachSymbolBinding(path, true, [](unsigned char* info) {
    if ((*info >> 4) != kGnuUnique) return false;
    *info = static_cast<unsigned char>((STB_GLOBAL << 4) | (*info & 0xf));
    return true;
  });
}

Result<int> CountUniqueSymbols(const std::string& path) {
  return ForEachSymbolBinding(path, false, [](unsigned char* info) { return (*info >> 4) == kGnuUnique; });
}

Result<std::vector<std::string>> NeededLibraries(const std::string& path) {
  auto pe = FindPatchelf();
  if (!pe.ok()) return pe.status();
  auto out = RunTool({*pe, "--print-needed", path});
  if (!out.ok()) return out.status();
  return Words(*out);
}

Result<std::string> Soname(const std::string& path) {
  auto pe = FindPatchelf();
  if (!pe.ok()) return pe.status();
  auto out = RunTool({*pe, "--print-soname", path});
  if (!out.ok()) return out.status();
  auto w = Words(*out);
  return w.empty() ? std::string() : w[0];
}

std::string SourceStamp(const std::string& path, const std::string& extra) {
  std::error_code ec;
  std::string real = fs::canonical(path, ec).string();
  struct stat st {};
  stat(path.c_str(), &st);
  uint64_t h = Fnv1a(real + "|" + std::to_string(st.st_size) + "|" + std::to_string(st.st_mtim.tv_sec) + "." +
                     std::to_string(st.st_mtim.tv_nsec) + "|" + extra);
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

Status MakePrivateCopy(const std::string& src, const std::string& dst, const CopyEdits& edits) {
  std::error_code ec;
  if (fs::exists(dst, ec)) return Status::Ok();
  auto pe = FindPatchelf();
  if (!pe.ok()) return pe.status();
  fs::create_directories(fs::path(dst).parent_path(), ec);
  if (ec) return Status(Code::kIoError, "cannot create " + fs::path(dst).parent_path().string() + ": " + ec.message());
  std::ostringstream tmp_name;
  tmp_name << dst << ".tmp." << getpid() << "." << std::this_thread::get_id();
  std::string tmp = tmp_name.str();
  fs::copy_file(src, tmp, fs::copy_options::overwrite_existing, ec);
  if (ec) return Status(Code::kIoError, "cannot copy " + src + " to " + tmp + ": " + ec.message());
  auto fail = [&](const Status& st) {
    fs::remove(tmp, ec);
    return Status(st.code(), "making the private copy " + dst + " of " + src + ": " + st.message());
  };
  if (!edits.soname.empty()) {
    if (auto r = RunTool({*pe, "--set-soname", edits.soname, tmp}); !r.ok()) return fail(r.status());
  }
  for (const auto& [from, to] : edits.replace_needed) {
    if (auto r = RunTool({*pe, "--replace-needed", from, to, tmp}); !r.ok()) return fail(r.status());
  }
  for (const auto& n : edits.add_needed) {
    if (auto r = RunTool({*pe, "--add-needed", n, tmp}); !r.ok()) return fail(r.status());
  }
  if (edits.absolute_rpath) {
    auto rp = RunTool({*pe, "--print-rpath", src});
    if (!rp.ok()) return fail(rp.status());
    std::string rpath = Words(*rp).empty() ? "" : Words(*rp)[0];
    std::string dir = fs::canonical(src, ec).parent_path().string();
    bool changed = false;
    for (auto p = rpath.find("$ORIGIN"); p != std::string::npos; p = rpath.find("$ORIGIN")) {
      rpath.replace(p, 7, dir);
      changed = true;
    }
    if (changed) {
      if (auto r = RunTool({*pe, "--set-rpath", rpath, tmp}); !r.ok()) return fail(r.status());
    }
  }
  if (auto n = RemoveUniqueSymbols(tmp); !n.ok()) return fail(n.status());
  if (rename(tmp.c_str(), dst.c_str()) != 0) return fail(Status::FromErrno("rename", errno));
  return Status::Ok();
}

std::string InterpreterCopies::dir() const { return (fs::path(cache_dir_) / std::to_string(index_)).string(); }

std::string InterpreterCopies::Destination(const std::string& name) const {
  std::string in_cache = dir() + "/" + name;
  if (new_dir_.empty() || known_.count(in_cache) != 0) return in_cache;
  return (fs::path(new_dir_) / std::to_string(index_) / name).string();
}

Result<std::string> InterpreterCopies::PrepareHost(const std::string& libpython, const std::string& pyhost) {
  auto soname = Soname(libpython);
  if (!soname.ok()) return soname.status();
  std::string stamp = SourceStamp(libpython, std::to_string(index_));
  libpython_copy_ = dir() + "/libpython-" + stamp + ".so";
  CopyEdits py;
  py.soname = "libshoal-python-" + std::to_string(index_) + "-" + stamp + ".so";
  if (auto st = MakePrivateCopy(libpython, libpython_copy_, py); !st.ok()) return st;
  std::string host_copy = dir() + "/libshoal_pyhost-" + SourceStamp(pyhost, libpython_copy_) + ".so";
  CopyEdits host;
  host.soname = "libshoal-pyhost-" + std::to_string(index_) + ".so";
  host.replace_needed.push_back({*soname, libpython_copy_});
  if (auto st = MakePrivateCopy(pyhost, host_copy, host); !st.ok()) return st;
  return host_copy;
}

Result<std::string> InterpreterCopies::PrepareTorchPython(const std::string& needed, const std::string& origin) {
  auto pe = FindPatchelf();
  if (!pe.ok()) return pe.status();
  auto rp = RunTool({*pe, "--print-rpath", origin});
  if (!rp.ok()) return rp.status();
  auto w = Words(*rp);
  std::string src = FindNeeded(needed, origin, w.empty() ? "" : w[0]);
  if (src.empty()) return Status(Code::kIoError, "cannot find " + needed + " (needed by " + origin + ")");
  std::string dst = Destination("libtorch_python-" + SourceStamp(src, libpython_copy_) + ".so");
  if (known_.count(dst) != 0) return dst;
  CopyEdits e;
  e.soname = "libshoal-torch-python-" + std::to_string(index_) + ".so";
  e.add_needed.push_back(libpython_copy_);
  if (auto st = MakePrivateCopy(src, dst, e); !st.ok()) return st;
  known_.insert(dst);
  return dst;
}

Result<std::string> InterpreterCopies::PrepareExtension(const std::string& origin, const std::string& fullname) {
  if (libpython_copy_.empty()) return Status::Internal("PrepareHost must run before PrepareExtension");
  auto needed = NeededLibraries(origin);
  if (!needed.ok()) return needed.status();
  CopyEdits e;
  std::string extra = libpython_copy_;
  for (const auto& n : *needed) {
    if (n.rfind("libtorch_python", 0) != 0) continue;
    auto tp = PrepareTorchPython(n, origin);
    if (!tp.ok()) return tp.status();
    e.replace_needed.push_back({n, *tp});
    extra += "|" + *tp;
  }
  e.add_needed.push_back(libpython_copy_);
  std::string dst = Destination("ext/" + fullname + "-" + SourceStamp(origin, extra) + ".so");
  if (auto st = MakePrivateCopy(origin, dst, e); !st.ok()) return st;
  known_.insert(dst);
  return dst;
}

}  // namespace shoal
